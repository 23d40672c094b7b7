"""Older GitLab tokens: CI_JOB_JWT_V2 (needs only its aud in settings) and the opt-in original CI_JOB_JWT."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import RSAKey

from gitlab_sts.core.errors import ConfigError, InvalidRequest
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.core.verify import VerifiedToken, verify_gitlab_token
from tests.core.conftest import DROP, GITLAB, NOW, SETTINGS_YAML, FakeKeySource, gitlab_claims, hand_token, public_set

RS256 = {"alg": "RS256", "kid": "gitlab-ci", "typ": "JWT"}
OTHER = "https://gitlab.other.example"


def legacy_settings(extra: str = "") -> Settings:
    """Two instances; legacyJobJwt on for gitlab.example.com only."""
    return parse_settings(f"""
issuer: https://sts.example.com
gitlab:
  - issuer: {GITLAB}
    audiences: [https://sts.example.com, {GITLAB}]
    legacyJobJwt: true
  - issuer: {OTHER}
    audiences: [https://sts.example.com]
{extra}""")


def ci_job_jwt(**overrides: Any) -> dict[str, Any]:
    """The original CI_JOB_JWT: bare-host iss, no aud, sub job_<id>."""
    base = {"iss": "gitlab.example.com", "aud": DROP, "sub": "job_302", "job_id": "302"}
    return gitlab_claims(**{**base, **overrides})


def verify(token: str, settings: Settings, key: RSAKey) -> VerifiedToken:
    return verify_gitlab_token(token, settings=settings, keys=FakeKeySource(public_set(key)), now=NOW)


def refused(token: str, settings: Settings, key: RSAKey, reason: str) -> str:
    with pytest.raises(InvalidRequest) as exc:
        verify(token, settings, key)
    assert exc.value.reason == reason, exc.value.description
    return exc.value.description


def test_ci_job_jwt_v2_needs_only_the_instance_url_in_audiences(gitlab_key: RSAKey) -> None:
    # CI_JOB_JWT_V2 (GitLab 14.7-16.x): https iss, project-path sub, aud = the instance URL.
    v2 = gitlab_claims(aud=GITLAB)
    token = hand_token(RS256, v2, gitlab_key)
    verified = verify(token, legacy_settings(), gitlab_key)
    assert verified.instance.issuer == GITLAB and not verified.legacy
    # Without the instance URL among the audiences, the same token is refused.
    refused(token, parse_settings(SETTINGS_YAML), gitlab_key, "bad_audience")


def test_ci_job_jwt_is_verified_as_the_instance_token_when_enabled(gitlab_key: RSAKey) -> None:
    verified = verify(hand_token(RS256, ci_job_jwt(), gitlab_key), legacy_settings(), gitlab_key)
    assert verified.legacy and verified.instance.issuer == GITLAB
    assert verified.claims["project_path"] == "platform/payments" and "aud" not in verified.claims


def test_ci_job_jwt_is_refused_by_default(gitlab_key: RSAKey) -> None:
    settings = parse_settings(SETTINGS_YAML)
    refused(hand_token(RS256, ci_job_jwt(), gitlab_key), settings, gitlab_key, "untrusted_issuer")


def test_ci_job_jwt_of_an_instance_without_the_opt_in_is_refused(gitlab_key: RSAKey) -> None:
    token = hand_token(RS256, ci_job_jwt(iss="gitlab.other.example"), gitlab_key)
    refused(token, legacy_settings(), gitlab_key, "untrusted_issuer")


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"aud": "https://sts.example.com"}, "bad_audience"),   # a bare-host iss with an aud is no CI_JOB_JWT
    ({"aud": GITLAB}, "bad_audience"),
    ({"sub": "project_path:platform/payments:ref_type:branch:ref:main"}, "claim_type"),
    ({"sub": "job_999"}, "claim_type"),                       # must name this token's own job
    ({"sub": "job_"}, "claim_type"),
    ({"iss": "https://gitlab.example.com/"}, "untrusted_issuer"),
    ({"iss": "GITLAB.EXAMPLE.COM"}, "untrusted_issuer"),
    ({"iss": "gitlab.example.com:443"}, "untrusted_issuer"),
    ({"project_id": 42}, "claim_type"),                       # the other claims keep GitLab's types
    ({"exp": NOW - 3600}, "expired"),
    ({"project_path": DROP}, "missing_claim"),
])
def test_malformed_ci_job_jwt_refused(gitlab_key: RSAKey, overrides: dict[str, Any], reason: str) -> None:
    refused(hand_token(RS256, ci_job_jwt(**overrides), gitlab_key), legacy_settings(), gitlab_key, reason)


def test_ci_job_jwt_signature_is_checked(gitlab_key: RSAKey, attacker_key: RSAKey) -> None:
    token = hand_token(RS256, ci_job_jwt(), attacker_key)
    refused(token, legacy_settings(), gitlab_key, "bad_signature")


def test_current_tokens_still_need_an_aud(gitlab_key: RSAKey) -> None:
    # legacyJobJwt changes nothing for https issuers: an id_tokens token without aud is still refused.
    refused(hand_token(RS256, gitlab_claims(aud=DROP), gitlab_key), legacy_settings(), gitlab_key, "bad_audience")


def test_two_legacy_instances_on_one_host_are_refused() -> None:
    with pytest.raises(ConfigError, match="same host"):
        parse_settings(f"""
issuer: https://sts.example.com
gitlab:
  - {{issuer: {GITLAB}, audiences: [x], legacyJobJwt: true}}
  - {{issuer: "{GITLAB}/second", audiences: [x], legacyJobJwt: true}}
""")


def test_pinned_at_needs_a_pinned_jwks_and_a_time_zone() -> None:
    with pytest.raises(ConfigError, match="pinnedAt needs a pinned jwks"):
        parse_settings(f"issuer: https://sts.example.com\ngitlab: [{{issuer: {GITLAB}, audiences: [x], "
                       "pinnedAt: '2025-01-01T00:00:00Z'}]")
    with pytest.raises(ConfigError, match="time zone"):
        parse_settings(f"issuer: https://sts.example.com\ngitlab: [{{issuer: {GITLAB}, audiences: [x], "
                       "jwks: {keys: []}, pinnedAt: '2025-01-01T00:00:00'}]")
