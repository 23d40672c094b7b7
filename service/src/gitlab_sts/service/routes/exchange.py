"""POST /v1/token, /v1/credentials and /v1/explain: read the form, run the exchange, answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from gitlab_sts.core.errors import ExchangeError, InvalidRequest, PayloadTooLarge, RequestTimeout
from gitlab_sts.core.exchange import parse_urlencoded
from gitlab_sts.service import metrics
from gitlab_sts.service.exchange import ENDPOINTS, Endpoint, Form, exchange, record, refused
from gitlab_sts.service.responses import current_service, error_answer, json_answer

# Bigger than any acceptable token plus form overhead; larger bodies are refused before parsing.
MAX_BODY = 96 * 1024

blueprint = Blueprint("exchange", __name__)


@blueprint.post("/v1/token")
def token() -> Response:
    """RFC 8693 token exchange."""
    return answer("/v1/token")


@blueprint.post("/v1/credentials")
def credentials() -> Response:
    """Token exchange, then AssumeRoleWithWebIdentity: credential_process JSON."""
    return answer("/v1/credentials")


@blueprint.post("/v1/explain")
def explain() -> Response:
    """Dry run: which bindings of the token's project match, and why not."""
    return answer("/v1/explain")


def answer(endpoint: Endpoint) -> Response:
    """Read the form, run the exchange, count and audit its decision, answer."""
    try:
        form = read_form()
    except ExchangeError as error:
        outcome = refused(endpoint, error)
    else:
        svc = current_service()
        outcome = exchange(endpoint, form, svc.snapshot(), svc.collaborators, svc.clock())
    record(outcome.audit)
    if isinstance(outcome.result, ExchangeError):
        return error_answer(outcome.result)
    return json_answer(outcome.result.body())


def read_form() -> Form:
    """The request's application/x-www-form-urlencoded body, bounded by MAX_BODY."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded", reason="bad_form")
    # With a Content-Length over MAX_CONTENT_LENGTH, werkzeug raises before reading; without one (chunked),
    # it stops reading at the limit without an error, so a body that reaches the limit is refused here
    # rather than parsed truncated. Parsed here rather than by werkzeug's form parser, which measured as
    # the largest cost of a request after the cryptography.
    try:
        body = request.get_data()
    except RequestEntityTooLarge:
        raise PayloadTooLarge(MAX_BODY) from None
    except ClientDisconnected as exc:
        # werkzeug reports any failed read as a disconnect; the worker's body deadline (service/worker.py) is
        # a TimeoutError underneath. The worker closes the connection after the answer.
        if isinstance(exc.__context__, TimeoutError):
            raise RequestTimeout from None
        raise
    if request.content_length is None and len(body) >= MAX_BODY:
        raise PayloadTooLarge(MAX_BODY)
    return parse_urlencoded(body)


if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

WsgiApp = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


def timed(wsgi_app: WsgiApp) -> WsgiApp:
    """Wrap a WSGI app so that every answer on an exchange path, refusals included, is timed."""
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        endpoint = environ.get("PATH_INFO")
        if endpoint not in ENDPOINTS:
            return wsgi_app(environ, start_response)
        started = time.perf_counter()
        try:
            return wsgi_app(environ, start_response)
        finally:
            metrics.LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    return app
