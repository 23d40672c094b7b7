"""Fixtures for the local STS tests: a small OIDC issuer on loopback and a configured local STS."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from joserfc import jwk, jwt

from gitlab_sts.testing.sts import RunningSts, start_local_sts
from gitlab_sts.testing.sts_config import parse_config

ACCOUNT = "111122223333"
SUB = "system:gitlabawsbinding:team-a:deploy"


@dataclass
class Issuer:
    """A tiny OIDC issuer: serves discovery and JWKS over http on 127.0.0.1 and signs tokens."""

    keys: dict[str, Any]
    path: str = ""
    published: list[str] | None = None  # kids to publish (default all)
    discovery_override: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    url: str = ""

    def __post_init__(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == issuer.path + "/.well-known/openid-configuration":
                    doc = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json",
                           "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                           "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
                    doc.update(issuer.discovery_override)
                    body = json.dumps(doc).encode()
                elif self.path == issuer.path + "/jwks.json":
                    kids = issuer.published if issuer.published is not None else list(issuer.keys)
                    body = json.dumps({"keys": [issuer.public(k) for k in kids]}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(issuer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def public(self, kid: str) -> dict[str, Any]:
        """The public JWK of a key, with its kid and use."""
        data = self.keys[kid].as_dict(private=False)
        data.update(kid=kid, use="sig")
        return data

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for the basic role, with overrides (None removes a claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.url, "sub": SUB, "aud": "sts.amazonaws.com",
                                  "iat": now, "nbf": now, "exp": now + 300, "jti": "j1"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any] | None = None, *, kid: str | None = "rsa", alg: str = "RS256",
             key: Any = None) -> str:
        """A compact JWS of the claims, signed with the named key (or another key under that kid)."""
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        signing_key = key if key is not None else self.keys[kid or "rsa"]
        return jwt.encode(header, claims if claims is not None else self.claims(), signing_key, algorithms=[alg])

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def signing_keys() -> dict[str, Any]:
    """Keys generated once per test session (RSA generation is the slow part)."""
    return {
        "rsa": jwk.RSAKey.generate_key(2048),
        "rsa2": jwk.RSAKey.generate_key(2048),
        "ec256": jwk.ECKey.generate_key("P-256"),
        "ec384": jwk.ECKey.generate_key("P-384"),
        "ec521": jwk.ECKey.generate_key("P-521"),
    }


@pytest.fixture(scope="session")
def issuer(signing_keys: dict[str, Any]) -> Iterator[Issuer]:
    """The registered issuer, with a path component like a GitLab behind a prefix."""
    served = Issuer(keys=dict(signing_keys), path="/tenant")
    yield served
    served.close()


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    """A trust policy document."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(provider_arn: str, actions: list[str] | str, condition: dict[str, Any] | None = None,
          effect: str = "Allow") -> dict[str, Any]:
    """One trust statement for a federated principal."""
    statement: dict[str, Any] = {"Effect": effect, "Principal": {"Federated": provider_arn}, "Action": actions}
    if condition:
        statement["Condition"] = condition
    return statement


def sts_config_for(issuer: Issuer, **extra: Any) -> dict[str, Any]:
    """The local STS configuration the tests share: one provider, a role per trust-policy case."""
    host = issuer.url.split("://", 1)[1]
    prov = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{host}"
    aws = "sts:AssumeRoleWithWebIdentity"
    base = {"StringEquals": {f"{host}:aud": "sts.amazonaws.com", f"{host}:sub": SUB}}

    def role(name: str, statements: list[dict[str, Any]], max_session: int = 3600) -> dict[str, Any]:
        return {"arn": f"arn:aws:iam::{ACCOUNT}:role/{name}", "maxSessionDuration": max_session,
                "trustPolicy": policy(*statements)}

    config: dict[str, Any] = {
        "account": ACCOUNT,
        "jwksCacheSeconds": 60,
        "providers": [{"url": issuer.url, "clientIds": ["sts.amazonaws.com", "other-client"]},
                      {"url": "https://elsewhere.example.com", "clientIds": ["sts.amazonaws.com"]}],
        "roles": [
            role("basic", [allow(prov, aws, base)]),
            role("long", [allow(prov, aws, base)], max_session=43200),
            role("tagged", [allow(prov, [aws, "sts:TagSession", "sts:SetSourceIdentity"], {
                "StringLike": {f"{host}:sub": "system:gitlabawsbinding:team-a:*"},
                "StringEqualsIfExists": {"aws:RequestTag/environment": "production"}})]),
            role("notags", [allow(prov, aws, {"StringLike": {f"{host}:sub": "*"}})]),
            role("wildcard-action", [allow(prov, "sts:*", {"StringLike": {f"{host}:sub": "*"}})]),
            role("deny", [allow(prov, aws, {"StringLike": {f"{host}:sub": "*"}}),
                          allow(prov, aws, {"StringLike": {f"{host}:sub": "*:blocked"}}, effect="Deny")]),
            role("other-provider", [allow(
                f"arn:aws:iam::{ACCOUNT}:oidc-provider/elsewhere.example.com", aws)]),
            role("gitlab-claim", [allow(prov, aws, {"StringEquals": {f"{host}:project_id": "42"}})]),
            role("path/nested/with-path", [allow(prov, aws, base)]),
        ],
    }
    config.update(extra)
    return config


@pytest.fixture(scope="session")
def local_sts(issuer: Issuer) -> Iterator[RunningSts]:
    """A local STS that trusts the issuer fixture."""
    running = start_local_sts(parse_config(sts_config_for(issuer)))
    yield running
    running.close()


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the developer's AWS configuration and credentials out of every test."""
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_STS", "AWS_ROLE_SESSION_NAME", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def sts_client(url: str) -> Any:
    """A real boto3 STS client for the local STS, unsigned, without retries."""
    config = Config(signature_version=UNSIGNED, retries={"mode": "standard", "total_max_attempts": 1})
    return boto3.client("sts", endpoint_url=url, region_name="us-east-1", config=config)


@pytest.fixture
def client(local_sts: RunningSts) -> Any:
    """A boto3 STS client pointed at the local STS."""
    return sts_client(local_sts.url)
