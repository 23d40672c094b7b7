"""service.exchange without Flask: each step's refusal is returned (not raised) with one audit event."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from joserfc.jwk import KeySet

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.core.errors import InvalidRequest, InvalidTarget, ServerError, TemporarilyUnavailable
from gitlab_sts.core.exchange import GRANT_TYPE
from gitlab_sts.core.keys import KeyRing
from gitlab_sts.core.replay import MemoryReplayStore
from gitlab_sts.core.settings import GitLabInstance, StsSettings, parse_settings
from gitlab_sts.service.exchange import Collaborators, Explained, Form, Issued, Outcome, exchange
from gitlab_sts.service.jwks import JwksCache
from gitlab_sts.service.state import Snapshot
from gitlab_sts.service.stsclient import StsClient
from gitlab_sts.testing.gitlab import FakeGitLab, job_claims
from tests.service.harness import EXAMPLES, JWT_TYPE, one_key_ring

GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"
NOW = float(int(time.time()))
STAGING = {"environment": "staging", "environment_protected": "false"}
# No example binding allows an unprotected ref deploying to production.
DENIED = {"ref": "nope", "ref_protected": "false", "environment": "production", "environment_protected": "true"}


def _no_sts(settings: StsSettings) -> StsClient:
    raise AssertionError("only /v1/credentials calls STS")


@pytest.fixture(scope="module")
def gitlab() -> FakeGitLab:
    fake = FakeGitLab()
    fake.issuer = GITLAB
    return fake


@pytest.fixture(scope="module")
def snapshot(gitlab: FakeGitLab) -> Snapshot:
    settings = parse_settings(yaml.safe_dump({
        "issuer": STS, "gitlab": [{"issuer": GITLAB, "audiences": [STS], "jwks": gitlab.jwks()}],
        "tokens": {"lifetime": 900, "maxLifetime": 3600, "audience": "sts.amazonaws.com"}}))
    loaded = load_bindings_dir(EXAMPLES)
    index = BindingIndex(loaded.bindings, default_issuer=GITLAB)
    keys = one_key_ring(datetime.fromtimestamp(NOW, UTC))
    return Snapshot(settings=settings, index=index, rejected=(), keys=keys)


def _via(snapshot: Snapshot) -> Collaborators:
    assert snapshot.settings is not None
    store = MemoryReplayStore()
    return Collaborators(gitlab_keys=JwksCache(snapshot.settings.jwks), replay=lambda _tokens: store, sts=_no_sts)


def _form(token: str, **extra: str) -> Form:
    fields = {"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": JWT_TYPE, **extra}
    return {name: [value] for name, value in fields.items()}


def _token(gitlab: FakeGitLab, **claims: Any) -> str:
    return gitlab.sign(job_claims(GITLAB, STS, now=int(NOW), **claims))


def test_token_is_issued_with_one_audit_event(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    token = _token(gitlab, **STAGING, job_id="77")
    outcome = exchange("/v1/token", _form(token), snapshot, _via(snapshot), NOW)
    assert isinstance(outcome.result, Issued)
    body = outcome.result.body()
    assert body["binding"] == "team-payments/deploy-staging"
    assert body["role_session_name"] == "gitlab-4321-77"
    assert body["expires_in"] == 900
    event = outcome.audit
    assert (event.endpoint, event.result, event.reason) == ("/v1/token", "issued", "ok")
    assert event.token == token and event.claims is not None and event.claims["job_id"] == "77"
    assert (event.binding, event.role_arn) == (body["binding"], body["role_arn"])
    assert event.jti == outcome.result.minted.jti and event.kid == outcome.result.minted.kid
    assert event.error is None


def test_explain_stops_after_the_decision(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    token = _token(gitlab, **DENIED)
    outcome = exchange("/v1/explain", _form(token), snapshot, _via(snapshot), NOW)
    assert isinstance(outcome.result, Explained)
    rows = outcome.result.body()["bindings"]
    assert rows and not any(row["matches"] for row in rows)
    assert (outcome.audit.result, outcome.audit.reason, outcome.audit.jti) == ("explained", "ok", None)


def _refusal(outcome: Outcome, kind: type[Exception], reason: str) -> Any:
    assert type(outcome.result) is kind, outcome.result
    assert outcome.audit.result == "denied" and outcome.audit.reason == reason
    assert outcome.audit.error == str(outcome.result)
    return outcome.result


def test_a_bad_form_is_refused_before_anything_is_known(snapshot: Snapshot) -> None:
    outcome = exchange("/v1/token", {"grant_type": [GRANT_TYPE]}, snapshot, _via(snapshot), NOW)
    _refusal(outcome, InvalidRequest, "bad_form")
    assert outcome.audit.token is None and outcome.audit.claims is None


def test_credentials_duration_is_checked_first(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    form = _form(_token(gitlab, **STAGING), duration_seconds="60")
    outcome = exchange("/v1/credentials", form, snapshot, _via(snapshot), NOW)
    _refusal(outcome, InvalidRequest, "bad_form")
    assert outcome.audit.token is None


def test_a_rule_failure_names_the_token_but_no_binding(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    token = _token(gitlab, **DENIED)
    outcome = exchange("/v1/token", _form(token), snapshot, _via(snapshot), NOW)
    error = _refusal(outcome, InvalidTarget, "rule_failed")
    assert error.status == 403
    assert outcome.audit.token == token and outcome.audit.claims is not None
    assert outcome.audit.binding is None


def test_not_configured_is_503(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    outcome = exchange("/v1/token", _form(_token(gitlab, **STAGING)), replace(snapshot, index=None),
                       _via(snapshot), NOW)
    assert _refusal(outcome, TemporarilyUnavailable, "not_ready").status == 503


def test_no_signing_key_is_refused_after_the_decision(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    expired = replace(snapshot, keys=KeyRing(()))
    outcome = exchange("/v1/token", _form(_token(gitlab, **STAGING)), expired, _via(snapshot), NOW)
    _refusal(outcome, TemporarilyUnavailable, "no_signing_key")
    assert outcome.audit.binding == "team-payments/deploy-staging"  # decided before the key was needed


def test_replay_is_checked_just_before_signing(gitlab: FakeGitLab, snapshot: Snapshot) -> None:
    assert snapshot.settings is not None
    tokens = snapshot.settings.tokens.model_copy(update={"replay_protection": True})
    once = replace(snapshot, settings=snapshot.settings.model_copy(update={"tokens": tokens}))
    via = _via(once)
    token = _token(gitlab, **STAGING)
    wrong_role = _form(token, resource="arn:aws:iam::111122223333:role/other")
    _refusal(exchange("/v1/token", wrong_role, once, via, NOW), InvalidTarget, "rule_failed")
    assert isinstance(exchange("/v1/token", _form(token), once, via, NOW).result, Issued)
    _refusal(exchange("/v1/token", _form(token), once, via, NOW + 1), InvalidRequest, "replayed")


class _BrokenKeys:
    """A key source with a bug: the exchange must answer 500 without details, and audit what it knew."""

    def key_set(self, instance: GitLabInstance) -> KeySet:
        raise RuntimeError("secret internal detail")

    def refresh(self, instance: GitLabInstance) -> KeySet | None:
        raise RuntimeError("secret internal detail")


def test_an_unexpected_error_is_a_server_error(gitlab: FakeGitLab, snapshot: Snapshot,
                                               caplog: pytest.LogCaptureFixture) -> None:
    token = _token(gitlab, **STAGING)
    store = MemoryReplayStore()
    via = Collaborators(gitlab_keys=_BrokenKeys(), replay=lambda _tokens: store, sts=_no_sts)
    outcome = exchange("/v1/token", _form(token), snapshot, via, NOW)
    error = _refusal(outcome, ServerError, "internal_error")
    assert (error.status, error.body()) == (500, {"error": "server_error", "error_description": "internal error"})
    assert outcome.audit.token == token
    assert "secret internal detail" in caplog.text  # the log has the traceback, the answer has nothing
