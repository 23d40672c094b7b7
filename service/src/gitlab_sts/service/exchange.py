"""One exchange, top to bottom: verify -> decide -> (replay) -> mint -> (STS) -> audit event.

No Flask here: `exchange` takes the parsed form, one config snapshot, the collaborators that do I/O
(GitLab key cache, replay memory, STS client) and the time, and returns what the HTTP layer answers
with plus the one audit event that describes the decision. The rules themselves live in gitlab_sts.core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.core.errors import ExchangeError, ServerError, TemporarilyUnavailable
from gitlab_sts.core.exchange import (
    ISSUED_TOKEN_TYPE,
    Decision,
    decide,
    explain,
    parse_duration,
    parse_form,
    role_session_name,
)
from gitlab_sts.core.keys import KeyRing
from gitlab_sts.core.mint import MintedToken, mint
from gitlab_sts.core.replay import ReplayStore, check_first_use
from gitlab_sts.core.settings import Settings, StsSettings, TokenSettings
from gitlab_sts.core.trustpolicy import trust_policy
from gitlab_sts.core.verify import KeySource, verify_gitlab_token
from gitlab_sts.service import metrics
from gitlab_sts.service.audit import AuditEvent, write_audit
from gitlab_sts.service.state import Snapshot
from gitlab_sts.service.stsclient import StsClient, StsCredentials, StsError

log = logging.getLogger("gitlab_sts.service")

Endpoint = Literal["/v1/token", "/v1/credentials", "/v1/explain"]
ENDPOINTS: tuple[Endpoint, ...] = ("/v1/token", "/v1/credentials", "/v1/explain")
Form = dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class Collaborators:
    """What an exchange talks to besides its config: GitLab's keys, the replay memory, AWS STS."""

    gitlab_keys: KeySource
    replay: Callable[[TokenSettings], ReplayStore]
    sts: Callable[[StsSettings], StsClient]


@dataclass(frozen=True, slots=True)
class Ready:
    """The snapshot one request uses, with everything an exchange needs present."""

    settings: Settings
    index: BindingIndex
    keys: KeyRing


@dataclass(frozen=True, slots=True)
class Issued:
    """/v1/token: the minted token for the chosen binding."""

    claims: dict[str, Any]
    decision: Decision
    minted: MintedToken

    def body(self) -> dict[str, Any]:
        """The RFC 8693 answer, plus which role and binding the token is for."""
        grant = self.decision.grant
        return {"access_token": self.minted.token, "issued_token_type": ISSUED_TOKEN_TYPE, "token_type": "N_A",
                "expires_in": self.minted.expires_in, "role_arn": grant.role_arn,
                "binding": self.decision.binding.key, "subject": grant.subject,
                "role_session_name": role_session_name(self.claims)}


@dataclass(frozen=True, slots=True)
class Credentials:
    """/v1/credentials: what AWS STS answered for the minted token."""

    credentials: StsCredentials

    def body(self) -> dict[str, Any]:
        """The AWS credential_process answer."""
        return self.credentials.credential_process()


@dataclass(frozen=True, slots=True)
class Explained:
    """/v1/explain: each binding of the token's project and whether it matches."""

    claims: dict[str, Any]
    rows: list[dict[str, Any]]

    def body(self) -> dict[str, Any]:
        """The dry-run answer."""
        return {"project_path": self.claims.get("project_path"), "project_id": self.claims.get("project_id"),
                "bindings": self.rows}


Answer = Issued | Credentials | Explained


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one exchange request came to: an answer or a refusal, and its audit event."""

    result: Answer | ExchangeError
    audit: AuditEvent


def exchange(endpoint: Endpoint, form: Form, snapshot: Snapshot, via: Collaborators, now: float) -> Outcome:
    """Run one exchange request; every refusal is returned as a typed error, never raised."""
    token: str | None = None
    claims: dict[str, Any] | None = None
    decision: Decision | None = None
    try:
        duration = parse_duration(form) if endpoint == "/v1/credentials" else None
        ready = require_ready(snapshot)
        request = parse_form(form)
        token = request.subject_token
        verified = verify_gitlab_token(token, settings=ready.settings, keys=via.gitlab_keys, now=now)
        claims = verified.claims
        if endpoint == "/v1/explain":
            rows = explain(verified, ready.index, ready.settings)
            return Outcome(Explained(claims, rows), AuditEvent(endpoint, "explained", "ok", token, claims))
        decision = decide(verified, ready.index, ready.settings, request)
        at = datetime.fromtimestamp(now, UTC)
        key = ready.keys.signing_key(at)
        if key is None:
            raise TemporarilyUnavailable("no signing key is active; the operator must rotate keys",
                                         reason="no_signing_key")
        if ready.settings.tokens.replay_protection:
            # Last check before signing, so a refused request (wrong resource, no key) does not use the token up.
            check_first_use(via.replay(ready.settings.tokens), verified, now=now, leeway=ready.settings.tokens.leeway)
        minted = mint(decision.grant, issuer=ready.settings.issuer, source_exp=int(claims["exp"]), key=key, now=at,
                      outlive_source=decision.binding.spec.aws.outlive_source_token)
        result: Answer = Issued(claims, decision, minted)
        if endpoint == "/v1/credentials":
            result = Credentials(assume_role(via.sts(ready.settings.sts), ready.settings, decision, minted,
                                             role_session_name(claims), duration))
        return Outcome(result, AuditEvent(endpoint, "issued", "ok", token, claims, decision.binding.key,
                                          decision.grant.role_arn, minted.jti, minted.kid))
    except ExchangeError as error:
        return refused(endpoint, error, token, claims, decision)
    except Exception:
        # Details go to the log only; the caller learns nothing about internals.
        log.exception("unexpected error", extra={"event": "internal_error", "path": endpoint})
        return refused(endpoint, ServerError(), token, claims, decision)


def require_ready(snapshot: Snapshot) -> Ready:
    """The snapshot's settings, bindings and keys, or 503 while any is missing."""
    if snapshot.settings is None or snapshot.index is None or snapshot.keys is None:
        raise TemporarilyUnavailable("the service is not configured yet", reason="not_ready")
    return Ready(snapshot.settings, snapshot.index, snapshot.keys)


def assume_role(client: StsClient, settings: Settings, decision: Decision, minted: MintedToken, session: str,
                duration: int | None) -> StsCredentials:
    """Trade the minted token for AWS credentials; an STS refusal becomes an exchange error naming the binding."""
    binding, role = decision.binding, decision.grant.role_arn
    try:
        credentials = client.assume_role_with_web_identity(role, minted.token, session, duration)
    except StsError as exc:
        metrics.STS_CALLS.labels(result=exc.code).inc()
        # The one thing a role owner needs to fix AccessDenied: the exact trust policy for this binding.
        fix = ({"trust_policy": trust_policy(binding, settings.issuer, settings.tokens.audience)}
               if exc.code == "AccessDenied" else {})
        raise exc.exchange_error(role, **fix, binding=binding.key, role_arn=role) from None
    metrics.STS_CALLS.labels(result="ok").inc()
    return credentials


def refused(endpoint: str, error: ExchangeError, token: str | None = None, claims: dict[str, Any] | None = None,
            decision: Decision | None = None) -> Outcome:
    """A refusal and its audit event, with whatever was known when it happened."""
    binding = role_arn = None
    if decision is not None:
        binding, role_arn = decision.binding.key, decision.grant.role_arn
    event = AuditEvent(endpoint, "denied", error.reason, token, claims, binding, role_arn, error=error.description)
    return Outcome(error, event)


def record(event: AuditEvent) -> None:
    """Count the decision and write its audit line."""
    metrics.EXCHANGES.labels(endpoint=event.endpoint, result=event.result, reason=event.reason).inc()
    write_audit(event)
