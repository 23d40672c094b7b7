"""Shared helpers for the core tests: GitLab-shaped claims, keys made once, hand-built tokens."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc.jwk import ECKey, KeySet, RSAKey

from gitlab_sts.core.bindings import CompiledBinding, compile_binding
from gitlab_sts.core.jwtparse import b64url_encode as b64url
from gitlab_sts.core.keys import KeyRing, ManagedKey, generate_key
from gitlab_sts.core.settings import GitLabInstance, Settings, parse_settings

# Nesting depths that exhaust the interpreter stack (celpy raises the limit to 2500 on import):
# json's C decoder uses one level of the limit per bracket, PyYAML's pure-Python parser several.
DEEP_JSON = sys.getrecursionlimit() + 500
DEEP_YAML = sys.getrecursionlimit() * 3 // 5

GITLAB = "https://gitlab.example.com"
AUDIENCE = "https://sts.example.com"
ISSUER = "https://sts.example.com"
NOW = 1_800_000_000  # a fixed clock for every test
ROLE = "arn:aws:iam::123456789012:role/payments-deploy"
ROLE_B = "arn:aws:iam::123456789012:role/payments-read"

SETTINGS_YAML = f"""
issuer: {ISSUER}
gitlab:
  - issuer: {GITLAB}
    audiences: [{AUDIENCE}]
tokens: {{lifetime: 900, maxLifetime: 3600, audience: sts.amazonaws.com, leeway: 30}}
"""


def gitlab_claims(**overrides: Any) -> dict[str, Any]:
    """Claims exactly as GitLab emits them: ids and booleans as strings, runner_id an int, nbf = iat - 5."""
    iat = NOW - 10
    claims: dict[str, Any] = {
        "namespace_id": "72",
        "namespace_path": "platform",
        "project_id": "42",
        "project_path": "platform/payments",
        "user_id": "7",
        "user_login": "alice",
        "user_email": "alice@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "environment_action": "start",
        "runner_id": 12,
        "runner_environment": "self-hosted",
        "sha": "a" * 40,
        "ci_config_ref_uri": "gitlab.example.com/platform/payments//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "a" * 40,
        "project_visibility": "private",
        "jti": "0e1c6c50-9f0a-4c1e-8d7e-9b2f3f6b1a11",
        "iss": GITLAB,
        "iat": iat,  # overrides below may replace or drop iat, nbf, exp independently
        "nbf": iat - 5,
        "exp": iat + 300,
        "sub": "project_path:platform/payments:ref_type:branch:ref:main",
        "aud": AUDIENCE,
    }
    for name, value in overrides.items():
        if value is _DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


_DROP: Any = _Drop()
DROP: Any = _DROP  # pass as an override value to remove a claim



def json_segment(value: Any) -> str:
    """A base64url JSON segment."""
    return b64url(json.dumps(value).encode())


def rs256_sign(key: RSAKey, signing_input: bytes) -> bytes:
    """RS256 signature made with cryptography directly (so headers are entirely ours)."""
    private = key.private_key
    assert private is not None
    return private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]


def hand_token(header: Mapping[str, Any] | str, claims: Mapping[str, Any] | str, key: RSAKey | None,
               *, signature: bytes | None = None) -> str:
    """A compact JWS whose segments are given raw (str) or as JSON; RS256-signed when key is given."""
    h = header if isinstance(header, str) else json_segment(dict(header))
    c = claims if isinstance(claims, str) else json_segment(dict(claims))
    signing_input = f"{h}.{c}".encode()
    if signature is None:
        signature = rs256_sign(key, signing_input) if key is not None else b""
    return f"{h}.{c}.{b64url(signature)}"


@pytest.fixture(scope="session")
def gitlab_key() -> RSAKey:
    """The GitLab instance's CI signing key (generated once)."""
    return RSAKey.generate_key(2048, private=True, parameters={"kid": "gitlab-ci", "use": "sig", "alg": "RS256"})


@pytest.fixture(scope="session")
def attacker_key() -> RSAKey:
    """A key nobody trusts, claiming the same kid as GitLab's."""
    return RSAKey.generate_key(2048, private=True, parameters={"kid": "gitlab-ci", "use": "sig", "alg": "RS256"})


@pytest.fixture(scope="session")
def second_key() -> RSAKey:
    """GitLab's other published key (the OAuth one)."""
    return RSAKey.generate_key(2048, private=True, parameters={"kid": "gitlab-oidc", "use": "sig", "alg": "RS256"})


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    """An EC key published by the instance."""
    return ECKey.generate_key("P-256", private=True, parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"})


def public_set(*keys: RSAKey | ECKey) -> KeySet:
    """A JWKS holding only the public halves."""
    return KeySet.import_key_set({"keys": [k.as_dict(private=False) for k in keys]})


class FakeKeySource:
    """A KeySource with a fixed set and a scripted refresh answer, counting calls."""

    def __init__(self, keys: KeySet, refreshed: KeySet | None = None) -> None:
        self.keys = keys
        self.refreshed = refreshed
        self.fetches = 0
        self.refreshes = 0

    def key_set(self, instance: GitLabInstance) -> KeySet:
        """Return the configured set."""
        self.fetches += 1
        return self.keys

    def refresh(self, instance: GitLabInstance) -> KeySet | None:
        """Return the scripted refreshed set."""
        self.refreshes += 1
        return self.refreshed


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings trusting one GitLab instance."""
    return parse_settings(SETTINGS_YAML)


def base_spec(**sections: Any) -> dict[str, Any]:
    """A valid binding spec; keyword sections (project, rules, aws) replace or extend the defaults."""
    spec: dict[str, Any] = {
        "project": {"path": "platform/payments"},
        "aws": {"roleArn": ROLE},
    }
    for name, value in sections.items():
        if value is _DROP:
            spec.pop(name, None)
        elif isinstance(value, dict) and isinstance(spec.get(name), dict) and name == "aws":
            merged = {**spec[name], **value}
            spec[name] = {k: v for k, v in merged.items() if v is not _DROP}
        else:
            spec[name] = value
    return spec


def compile_spec(name: str = "deploy", namespace: str = "team-a", **sections: Any) -> CompiledBinding:
    """Compile base_spec(**sections)."""
    return compile_binding(namespace, name, base_spec(**sections))


START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def managed_keys() -> tuple[ManagedKey, ManagedKey]:
    """Two RS256 managed keys: A signs in week 1, B in week 2 (generated once)."""
    week = timedelta(days=7)
    a = generate_key("RS256", created_at=START - timedelta(days=1), activate_at=START,
                     retire_at=START + week, remove_at=START + week + timedelta(hours=2))
    b = generate_key("RS256", created_at=START + week - timedelta(days=1), activate_at=START + week,
                     retire_at=START + 2 * week, remove_at=START + 2 * week + timedelta(hours=2))
    return a, b


@pytest.fixture(scope="session")
def ec_managed_key() -> ManagedKey:
    """An ES256 managed key open for a year from START."""
    return generate_key("ES256", created_at=START, activate_at=START, retire_at=START + timedelta(days=365),
                        remove_at=START + timedelta(days=366))


@pytest.fixture(scope="session")
def ring(managed_keys: tuple[ManagedKey, ManagedKey]) -> KeyRing:
    """The two managed keys as a ring."""
    return KeyRing(managed_keys)


Factory = Callable[..., dict[str, Any]]
