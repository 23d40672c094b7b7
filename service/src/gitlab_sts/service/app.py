"""The exchange service: Flask application factory and its routes."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.core.errors import ExchangeError, InvalidRequest, TemporarilyUnavailable
from gitlab_sts.core.exchange import (
    ISSUED_TOKEN_TYPE,
    Decision,
    ExchangeRequest,
    decide,
    explain,
    parse_form,
    parse_urlencoded,
)
from gitlab_sts.core.keys import KeyRing
from gitlab_sts.core.mint import MintedToken, mint
from gitlab_sts.core.publishing import discovery_document
from gitlab_sts.core.replay import MemoryReplayStore, ReplayStore, check_first_use
from gitlab_sts.core.settings import JwksSettings, Settings, StsSettings
from gitlab_sts.core.trustpolicy import trust_policy
from gitlab_sts.core.verify import VerifiedToken, verify_gitlab_token
from gitlab_sts.service import metrics
from gitlab_sts.service.audit import audit, configure_logging
from gitlab_sts.service.jwks import JwksCache
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.state import ConfigState, Snapshot
from gitlab_sts.service.stsclient import StsClient, StsError

log = logging.getLogger("gitlab_sts.service")
# Bigger than any acceptable token plus form overhead; larger bodies are refused before parsing.
MAX_BODY = 96 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Service:
    """The per-process state of the exchange service (config, key cache, clock)."""

    def __init__(self, paths: ConfigPaths, clock: Callable[[], float] = time.time) -> None:
        self.state = ConfigState(paths)
        self.clock = clock
        snapshot = self.state.current()
        self.jwks = JwksCache(snapshot.settings.jwks if snapshot.settings else JwksSettings())
        self.development_keys = paths.development_keys
        self._sts: tuple[StsSettings, StsClient] | None = None
        # Used when settings turn on tokens.replayProtection (per process; see core.replay).
        self.replay: ReplayStore = MemoryReplayStore()

    def sts(self, settings: StsSettings) -> StsClient:
        """The STS client for the current settings (rebuilt only when they change)."""
        current = self._sts
        if current is None or current[0] != settings:
            client = StsClient(settings.endpoint, region=settings.region, timeout=settings.timeout,
                               ca_bundle=settings.ca_bundle)
            current = self._sts = (settings, client)
        return current[1]

    def snapshot(self) -> Snapshot:
        """Current config; updates the key-cache settings when settings changed."""
        snap = self.state.current()
        if snap.settings is not None and snap.settings.jwks is not self.jwks.settings:
            self.jwks.configure(snap.settings.jwks)
        return snap

    def now(self) -> datetime:
        """The current time (injectable for tests)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can exchange tokens, and why not."""
        snap = self.snapshot()
        problems = []
        if snap.settings is None:
            problems.append("settings not loaded")
        if snap.index is None:
            problems.append("bindings not loaded")
        key = snap.keys.signing_key(self.now()) if snap.keys else None
        if key is None:
            problems.append("no signing key is active")
        detail: dict[str, Any] = {
            "ready": not problems, "problems": problems,
            "errors": snap.errors,  # a file that failed to load (the last good one is still used)
            "bindings": len(snap.index) if snap.index else 0,
            "bindings_sha256": snap.bindings_digest,
            # Runner jobs can reach /readyz: a count only, the details (names, errors) go to the log.
            "rejected_bindings": len(snap.rejected),
            "signing_kid": key.kid if key else None,
            "development_keys": self.development_keys,
            "issuer": snap.settings.issuer if snap.settings else None,
            "gitlab": self.jwks.status(),
        }
        if snap.settings is not None:
            s = snap.settings
            # The issuer URL AWS reads: the service's own routes (Ingress) and/or the operator's S3 copy.
            detail["publishing"] = {"issuer": s.issuer, "jwks_uri": s.jwks_uri, "via": list(s.publish.via)}
            warnings = pinned_warnings(s, self.now(), snap.pinned_from_operator)
            if warnings:
                detail["warnings"] = warnings  # a stale pinned key set still verifies: warn, stay ready
        return not problems, detail


def pinned_warnings(settings: Settings, now: datetime, from_operator: frozenset[str] = frozenset()) -> list[str]:
    """Warnings for pinned GitLab key sets older than pinnedMaxAgeDays; also sets the age metric.

    settings are the effective ones (Snapshot.settings): for the issuers in from_operator, jwks and pinnedAt
    are the operator's refreshed copy and its fetchedAt, so the age is that copy's.
    """
    out = []
    for inst in settings.gitlab:
        if inst.jwks is None or inst.pinned_at is None:
            continue
        age = now - inst.pinned_at
        metrics.PINNED_JWKS_AGE.labels(issuer=inst.issuer).set(age.total_seconds())
        if age.days < inst.pinned_max_age_days:
            continue
        if inst.issuer in from_operator:
            out.append(f"the pinned JWKS of {inst.issuer} was last fetched by the operator from "
                       f"{inst.pinned_jwks_source} {age.days} days ago (fetchedAt), more than "
                       f"pinnedMaxAgeDays={inst.pinned_max_age_days}: the refresh is failing; see the operator's "
                       "log and the pinned-jwks.json entry of its status ConfigMap")
        elif inst.pinned_jwks_source is not None:
            out.append(f"the pinned JWKS of {inst.issuer} was copied {age.days} days ago (pinnedAt) and the "
                       f"operator has not fetched a newer copy from {inst.pinned_jwks_source}, more than "
                       f"pinnedMaxAgeDays={inst.pinned_max_age_days}: see the operator's log and status ConfigMap")
        else:
            out.append(f"the pinned JWKS of {inst.issuer} was copied {age.days} days ago (pinnedAt), more than "
                       f"pinnedMaxAgeDays={inst.pinned_max_age_days}: if GitLab rotated its CI signing key, its "
                       "tokens fail with unknown_kid; copy the key set again and update pinnedAt")
    return out


def _service() -> Service:
    svc: Service = current_app.extensions["gitlab_sts"]
    return svc


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """An uncacheable JSON answer (what jsonify writes, without its per-call lookups: the exchange hot path)."""
    text = json.dumps(body, separators=(",", ":"), default=str) + "\n"
    return Response(text, status=status, mimetype="application/json", headers=NO_STORE)


def _error_response(exc: ExchangeError) -> Response:
    return _json(exc.body(), exc.status)


@dataclass(frozen=True)
class Ready:
    """The snapshot one request uses, with everything an exchange needs present."""

    settings: Settings
    index: BindingIndex
    keys: KeyRing


def _require_ready(svc: Service) -> Ready:
    snap = svc.snapshot()
    if snap.settings is None or snap.index is None or snap.keys is None:
        raise TemporarilyUnavailable("the service is not configured yet", reason="not_ready")
    return Ready(snap.settings, snap.index, snap.keys)


def _form() -> dict[str, list[str]]:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded", reason="bad_form")
    # The body is bounded by MAX_CONTENT_LENGTH: with a Content-Length, werkzeug answers 413 before reading;
    # without one (chunked), it stops reading at the limit without an error, so a body that reaches the
    # limit is refused here rather than parsed truncated. Parsed here rather than by werkzeug's form parser,
    # which measured as the largest cost of a request after the cryptography.
    body = request.get_data()
    if request.content_length is None and len(body) >= MAX_BODY:
        raise RequestEntityTooLarge()
    return parse_urlencoded(body)


def _verified_request(svc: Service, form: dict[str, list[str]]) -> tuple[Ready, ExchangeRequest, VerifiedToken]:
    """Check the RFC 8693 form and verify its GitLab token against one consistent snapshot."""
    ready = _require_ready(svc)
    form_request = parse_form(form, max_token_bytes=ready.settings.tokens.max_token_bytes)
    g.token = form_request.subject_token
    verified = verify_gitlab_token(form_request.subject_token, settings=ready.settings, keys=svc.jwks,
                                   now=svc.clock())
    g.claims = verified.claims
    return ready, form_request, verified


@dataclass(frozen=True)
class Exchange:
    """A completed exchange: the snapshot used, the verified GitLab token, the decision and the minted token."""

    ready: Ready
    verified: VerifiedToken
    decision: Decision
    minted: MintedToken


def exchange_token(svc: Service, form: dict[str, list[str]]) -> Exchange:
    """Verify, decide and mint; shared by /v1/token and /v1/credentials."""
    ready, form_request, verified = _verified_request(svc, form)
    decision = decide(verified, ready.index, ready.settings, form_request)
    g.binding, g.role_arn = decision.binding.key, decision.grant.role_arn
    now = svc.now()
    key = ready.keys.signing_key(now)
    if key is None:
        raise TemporarilyUnavailable("no signing key is active; the operator must rotate keys",
                                     reason="no_signing_key")
    if ready.settings.tokens.replay_protection:
        # Last check before signing, so a refused request (wrong resource, no key) does not use the token up.
        check_first_use(svc.replay, verified, now=svc.clock(), leeway=ready.settings.tokens.leeway)
    minted = mint(decision.grant, issuer=ready.settings.issuer, source_exp=int(verified.claims["exp"]),
                  key=key, now=now, outlive_source=decision.binding.spec.aws.outlive_source_token)
    return Exchange(ready, verified, decision, minted)


def _record_success(endpoint: str, result: str, verified: VerifiedToken, ex: Exchange | None = None) -> None:
    """The metrics and the audit line of a request that succeeded."""
    metrics.EXCHANGES.labels(endpoint=endpoint, result=result, reason="ok").inc()
    metrics.LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - g.started)
    if ex is None:
        audit(endpoint=endpoint, result=result, reason="ok", token=g.token, claims=verified.claims)
    else:
        audit(endpoint=endpoint, result=result, reason="ok", token=g.token, claims=verified.claims,
              binding=ex.decision.binding.key, role_arn=ex.decision.grant.role_arn, jti=ex.minted.jti,
              kid=ex.minted.kid)


def _duration(form: dict[str, list[str]]) -> int | None:
    values = form.get("duration_seconds")
    if not values:
        return None
    try:
        value = int(values[0])
    except ValueError:
        value = 0
    if not 900 <= value <= 43200:
        raise InvalidRequest("duration_seconds must be an integer from 900 to 43200", reason="bad_form")
    return value


def role_session_name(claims: dict[str, Any]) -> str:
    """gitlab-<project_id>-<job_id>, within STS's 2-64 characters of [\\w+=,.@-]."""
    return f"gitlab-{claims.get('project_id')}-{claims.get('job_id')}"[:64]


def create_app(paths: ConfigPaths | None = None, *, clock: Callable[[], float] = time.time,
               watch: bool = True) -> Flask:
    """Create the exchange service application."""
    configure_logging()
    # Paths given, so Flask does not search the `gitlab_sts` namespace package for them (it would trip over
    # setuptools' editable-install path hook); the app serves no templates, static or instance files.
    here = os.path.dirname(os.path.abspath(__file__))
    app = Flask("gitlab_sts.service", root_path=here, instance_path=here)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    svc = Service(paths or ConfigPaths.from_env(), clock=clock)
    if watch:
        svc.state.start_watcher()
    app.extensions["gitlab_sts"] = svc

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.token = g.claims = g.binding = g.role_arn = None

    @app.errorhandler(ExchangeError)
    def _exchange_error(exc: ExchangeError) -> Response:
        endpoint = request.path
        if endpoint.startswith("/v1/"):
            metrics.EXCHANGES.labels(endpoint=endpoint, result="denied", reason=exc.reason).inc()
            metrics.LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - g.started)
            audit(endpoint=endpoint, result="denied", reason=exc.reason, token=g.token, claims=g.claims,
                  binding=g.binding, role_arn=g.role_arn, error=exc.description)
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 413:
            error = InvalidRequest(f"the request body is larger than {MAX_BODY} bytes", reason="too_large")
        else:
            error = InvalidRequest(exc.description or exc.name, reason=f"http_{code}")
        error.status = code
        return _exchange_error(error)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Details go to the log only; the caller learns nothing about internals.
        log.exception("unexpected error", extra={"event": "internal_error", "path": request.path})
        error = ExchangeError("internal error", reason="internal_error")
        error.error, error.status = "server_error", 500
        return _exchange_error(error)

    @app.post("/v1/token")
    def token() -> Response:
        ex = exchange_token(_service(), _form())
        _record_success("/v1/token", "issued", ex.verified, ex)
        return _json({
            "access_token": ex.minted.token, "issued_token_type": ISSUED_TOKEN_TYPE, "token_type": "N_A",
            "expires_in": ex.minted.expires_in, "role_arn": ex.decision.grant.role_arn,
            "binding": ex.decision.binding.key, "subject": ex.decision.grant.subject,
            "role_session_name": role_session_name(ex.verified.claims),
        })

    @app.post("/v1/credentials")
    def credentials() -> Response:
        svc = _service()
        form = _form()
        duration = _duration(form)
        ex = exchange_token(svc, form)
        settings, binding, role = ex.ready.settings, ex.decision.binding, ex.decision.grant.role_arn
        session = role_session_name(ex.verified.claims)
        try:
            creds = svc.sts(settings.sts).assume_role_with_web_identity(role, ex.minted.token, session, duration)
        except StsError as exc:
            metrics.STS_CALLS.labels(result=exc.code).inc()
            error = exc.exchange_error(role)
            if exc.code == "AccessDenied":
                # The one thing a role owner needs to fix it: the exact trust policy for this binding.
                error.details["trust_policy"] = trust_policy(binding, settings.issuer, settings.tokens.audience)
            error.details.update(binding=binding.key, role_arn=role)
            raise error from None
        metrics.STS_CALLS.labels(result="ok").inc()
        _record_success("/v1/credentials", "issued", ex.verified, ex)
        return _json(creds.credential_process())

    @app.post("/v1/explain")
    def explain_route() -> Response:
        ready, _, verified = _verified_request(_service(), _form())
        rows = explain(verified, ready.index, ready.settings)
        _record_success("/v1/explain", "explained", verified)
        claims = verified.claims
        return _json({"project_path": claims.get("project_path"), "project_id": claims.get("project_id"),
                          "bindings": rows})

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        snap = _service().snapshot()
        if snap.settings is None:
            raise TemporarilyUnavailable("settings are not loaded", reason="not_ready")
        s = snap.settings
        # The same document the operator uploads to S3 (core.publishing).
        response = jsonify(discovery_document(s.issuer, s.tokens.algorithm))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    @app.get("/.well-known/jwks.json")
    def jwks() -> Response:
        svc = _service()
        snap = svc.snapshot()
        if snap.keys is None:
            raise TemporarilyUnavailable("signing keys are not loaded", reason="not_ready")
        response = jsonify(snap.keys.jwks(svc.now()))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ready, detail = _service().readiness()
        response = jsonify(detail)
        response.status_code = 200 if ready else 503
        return response

    @app.get("/metrics")
    def metrics_route() -> Response:
        svc = _service()
        snap = svc.snapshot()
        now = svc.now()
        key = snap.keys.signing_key(now) if snap.keys else None
        if key is not None:
            metrics.KEY_AGE.set((now - key.activate_at).total_seconds())
            metrics.KEY_REMAINING.set((key.retire_at - now).total_seconds())
        if snap.settings is not None:
            pinned_warnings(snap.settings, now, snap.pinned_from_operator)
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    return app
