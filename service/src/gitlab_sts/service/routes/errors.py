"""Every refusal, whatever raised it, answers as RFC 6749 JSON; those on exchange paths are also audited."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from gitlab_sts.core.errors import ExchangeError, HttpRefusal, MethodNotAllowed, ServerError
from gitlab_sts.service.exchange import ENDPOINTS, record, refused
from gitlab_sts.service.responses import error_answer

log = logging.getLogger("gitlab_sts.service")

blueprint = Blueprint("errors", __name__)


@blueprint.app_errorhandler(ExchangeError)
def exchange_error(error: ExchangeError) -> Response:
    """A refusal raised outside the exchange itself (e.g. discovery before settings load)."""
    endpoint = request.path
    if endpoint in ENDPOINTS:
        record(refused(endpoint, error).audit)
    return error_answer(error)


@blueprint.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """What werkzeug refuses (unknown path, wrong method), in the same JSON shape."""
    code = exc.code or 500
    description = exc.description or exc.name
    if isinstance(exc, WerkzeugMethodNotAllowed):
        return exchange_error(MethodNotAllowed(description, allow=tuple(exc.valid_methods or ())))
    return exchange_error(HttpRefusal(description, status=code))


@blueprint.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    """A bug outside the exchange: logged with its traceback, answered without details."""
    log.exception("unexpected error", extra={"event": "internal_error", "path": request.path})
    return exchange_error(ServerError())
