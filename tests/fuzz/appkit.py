"""An in-process exchange service (Flask test client) with a pinned GitLab key set: no network, fast."""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from flask import Flask
from flask.testing import FlaskClient

from gitlab_sts.service.app import create_app
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.testing.gitlab import FakeGitLab, job_claims
from tests.service.harness import EXAMPLES, GRANT, JWT_TYPE, keyring_file, one_key_ring

GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"
RFC6749_ERRORS = {"invalid_request", "invalid_target", "unsupported_grant_type", "temporarily_unavailable",
                  "invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope"}
FORM = "application/x-www-form-urlencoded"


@dataclass
class App:
    """A configured app, its test client and the GitLab stand-in that signs its tokens."""

    app: Flask
    client: FlaskClient
    gitlab: FakeGitLab
    root: Path

    def token(self, **claims: Any) -> str:
        """A GitLab job token for this service (claims override GitLab's defaults; None removes one)."""
        return self.gitlab.sign(job_claims(GITLAB, STS, **claims))

    def staging(self, **claims: Any) -> str:
        """A token the example deploy-staging binding accepts."""
        return self.token(**{"environment": "staging", "environment_protected": "false", **claims})

    def post(self, body: bytes | str, path: str = "/v1/token", content_type: str = FORM) -> Any:
        """POST a raw body."""
        return self.client.post(path, data=body, headers={"Content-Type": content_type})

    def exchange(self, token: str, path: str = "/v1/token", **extra: str) -> Any:
        """POST an RFC 8693 form for a token."""
        form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE, **extra}
        return self.post(urllib.parse.urlencode(form), path)


def make_app(root: Path, *, gitlab: FakeGitLab | None = None, clock: Any = None, **tokens: Any) -> App:
    """Write a config folder (pinned GitLab JWKS, example bindings, one signing key) and build the app."""
    fake = gitlab or FakeGitLab()
    fake.issuer = GITLAB
    root.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "issuer": STS,
        "gitlab": [{"issuer": GITLAB, "audiences": [STS], "jwks": fake.jwks()}],
        "tokens": {"lifetime": 900, "maxLifetime": 3600, "audience": "sts.amazonaws.com", **tokens},
    }
    (root / "settings.yaml").write_text(yaml.safe_dump(settings))
    shutil.copytree(EXAMPLES, root / "bindings", dirs_exist_ok=True)
    keyring_file(root / "keys", one_key_ring())
    paths = ConfigPaths(root / "settings.yaml", root / "bindings", root / "keys")
    kwargs: dict[str, Any] = {"watch": False}
    if clock is not None:
        kwargs["clock"] = clock
    app = create_app(paths, **kwargs)
    return App(app, app.test_client(), fake, root)


def assert_refused(answer: Any, statuses: tuple[int, ...] = (400, 403, 413)) -> dict[str, Any]:
    """A 4xx with an RFC 6749 JSON body, no-store, and no token."""
    assert answer.status_code in statuses, (answer.status_code, answer.get_data(as_text=True)[:300])
    body: dict[str, Any] = answer.get_json()
    assert isinstance(body, dict) and body.get("error") in RFC6749_ERRORS, body
    assert isinstance(body.get("error_description"), str)
    assert "access_token" not in body
    assert answer.headers.get("Cache-Control") == "no-store"
    return body
