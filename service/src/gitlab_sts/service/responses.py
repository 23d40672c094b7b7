"""How the service answers: uncacheable JSON, RFC 6749 error bodies, and the per-process Service."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app

from gitlab_sts.core.errors import ExchangeError
from gitlab_sts.service.runtime import Service

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
EXTENSION = "gitlab_sts"  # the key of the Service in app.extensions


def current_service() -> Service:
    """The Service of the application handling this request."""
    svc: Service = current_app.extensions[EXTENSION]
    return svc


def json_answer(body: dict[str, Any], status: int = 200) -> Response:
    """An uncacheable JSON answer (what jsonify writes, without its per-call lookups: the exchange hot path)."""
    text = json.dumps(body, separators=(",", ":"), default=str) + "\n"
    return Response(text, status=status, mimetype="application/json", headers=NO_STORE)


def error_answer(error: ExchangeError) -> Response:
    """The RFC 6749 section 5.2 answer for a refusal, with the headers it carries (e.g. Allow)."""
    response = json_answer(error.body(), error.status)
    for name, value in error.headers().items():
        response.headers[name] = value
    return response
