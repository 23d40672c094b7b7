"""The exchange service: Flask application factory and its routes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from gitlab_sts.core.errors import ExchangeError, InvalidRequest, TemporarilyUnavailable
from gitlab_sts.core.exchange import ISSUED_TOKEN_TYPE, ExchangeRequest, decide, explain, parse_form
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


def _error_response(exc: ExchangeError) -> Response:
    response = jsonify(exc.body())
    response.status_code = exc.status
    response.headers.update(NO_STORE)
    return response


def _require_ready(svc: Service) -> Snapshot:
    snap = svc.snapshot()
    if snap.settings is None or snap.index is None or snap.keys is None:
        raise TemporarilyUnavailable("the service is not configured yet", reason="not_ready")
    return snap


def _verify(svc: Service, snap: Snapshot, form_request: ExchangeRequest) -> VerifiedToken:
    assert snap.settings is not None
    return verify_gitlab_token(form_request.subject_token, settings=snap.settings, keys=svc.jwks,
                               now=svc.clock())


def _form() -> dict[str, list[str]]:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded", reason="bad_form")
    return {k: request.form.getlist(k) for k in request.form}


def exchange_token(svc: Service, endpoint: str) -> tuple[ExchangeRequest, VerifiedToken, MintedToken, Any]:
    """Verify, decide and mint; shared by /v1/token and /v1/credentials."""
    snap = _require_ready(svc)
    assert snap.settings is not None and snap.index is not None and snap.keys is not None
    form_request = parse_form(_form(), max_token_bytes=snap.settings.tokens.max_token_bytes)
    g.token = form_request.subject_token
    verified = _verify(svc, snap, form_request)
    g.claims = verified.claims
    decision = decide(verified, snap.index, snap.settings, form_request)
    g.binding, g.role_arn = decision.binding.key, decision.grant.role_arn
    now = svc.now()
    key = snap.keys.signing_key(now)
    if key is None:
        raise TemporarilyUnavailable("no signing key is active; the operator must rotate keys",
                                     reason="no_signing_key")
    if snap.settings.tokens.replay_protection:
        # Last check before signing, so a refused request (wrong resource, no key) does not use the token up.
        check_first_use(svc.replay, verified, now=svc.clock(), leeway=snap.settings.tokens.leeway)
    minted = mint(decision.grant, issuer=snap.settings.issuer, source_exp=int(verified.claims["exp"]),
                  key=key, now=now, outlive_source=decision.binding.spec.aws.outlive_source_token)
    return form_request, verified, minted, decision


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
    app = Flask("gitlab_sts.service")
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
        svc = _service()
        _, verified, minted, decision = exchange_token(svc, "/v1/token")
        metrics.EXCHANGES.labels(endpoint="/v1/token", result="issued", reason="ok").inc()
        metrics.LATENCY.labels(endpoint="/v1/token").observe(time.perf_counter() - g.started)
        audit(endpoint="/v1/token", result="issued", reason="ok", token=g.token, claims=verified.claims,
              binding=decision.binding.key, role_arn=decision.grant.role_arn, jti=minted.jti, kid=minted.kid)
        body = {
            "access_token": minted.token, "issued_token_type": ISSUED_TOKEN_TYPE, "token_type": "N_A",
            "expires_in": minted.expires_in, "role_arn": decision.grant.role_arn,
            "binding": decision.binding.key, "subject": decision.grant.subject,
            "role_session_name": role_session_name(verified.claims),
        }
        response = jsonify(body)
        response.headers.update(NO_STORE)
        return response

    @app.post("/v1/credentials")
    def credentials() -> Response:
        svc = _service()
        duration = _duration(_form())
        _, verified, minted, decision = exchange_token(svc, "/v1/credentials")
        snap = svc.snapshot()
        assert snap.settings is not None
        role = decision.grant.role_arn
        session = role_session_name(verified.claims)
        try:
            creds = svc.sts(snap.settings.sts).assume_role_with_web_identity(role, minted.token, session, duration)
        except StsError as exc:
            metrics.STS_CALLS.labels(result=exc.code).inc()
            error = exc.exchange_error(role)
            if exc.code == "AccessDenied":
                # The one thing a role owner needs to fix it: the exact trust policy for this binding.
                error.details["trust_policy"] = trust_policy(decision.binding, snap.settings.issuer,
                                                             snap.settings.tokens.audience)
            error.details.update(binding=decision.binding.key, role_arn=role)
            raise error from None
        metrics.STS_CALLS.labels(result="ok").inc()
        metrics.EXCHANGES.labels(endpoint="/v1/credentials", result="issued", reason="ok").inc()
        metrics.LATENCY.labels(endpoint="/v1/credentials").observe(time.perf_counter() - g.started)
        audit(endpoint="/v1/credentials", result="issued", reason="ok", token=g.token, claims=verified.claims,
              binding=decision.binding.key, role_arn=role, jti=minted.jti, kid=minted.kid)
        response = jsonify(creds.credential_process())
        response.headers.update(NO_STORE)
        return response

    @app.post("/v1/explain")
    def explain_route() -> Response:
        svc = _service()
        snap = _require_ready(svc)
        assert snap.settings is not None and snap.index is not None
        form_request = parse_form(_form(), max_token_bytes=snap.settings.tokens.max_token_bytes)
        g.token = form_request.subject_token
        verified = _verify(svc, snap, form_request)
        rows = explain(verified, snap.index, snap.settings)
        metrics.EXCHANGES.labels(endpoint="/v1/explain", result="explained", reason="ok").inc()
        audit(endpoint="/v1/explain", result="explained", reason="ok", token=g.token, claims=verified.claims)
        claims = verified.claims
        response = jsonify({"project_path": claims.get("project_path"), "project_id": claims.get("project_id"),
                            "bindings": rows})
        response.headers.update(NO_STORE)
        return response

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
