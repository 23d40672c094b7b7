"""Each refusal class carries its RFC 6749 code, HTTP status and reason from construction on."""

from __future__ import annotations

import pytest

from gitlab_sts.core.errors import (
    ExchangeError,
    HttpRefusal,
    InvalidRequest,
    InvalidTarget,
    MethodNotAllowed,
    PayloadTooLarge,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)


@pytest.mark.parametrize(("error", "code", "status", "reason"), [
    (InvalidRequest("x"), "invalid_request", 400, "invalid_request"),
    (InvalidRequest("x", reason="bad_form"), "invalid_request", 400, "bad_form"),
    (UnsupportedGrantType("x"), "unsupported_grant_type", 400, "unsupported_grant_type"),
    (InvalidTarget("x"), "invalid_target", 403, "no_binding"),
    (TemporarilyUnavailable("x"), "temporarily_unavailable", 503, "unavailable"),
    (PayloadTooLarge(98304), "invalid_request", 413, "too_large"),
    (MethodNotAllowed("x", allow=("OPTIONS", "POST")), "invalid_request", 405, "http_405"),
    (HttpRefusal("x", status=404), "invalid_request", 404, "http_404"),
    (ServerError(), "server_error", 500, "internal_error"),
], ids=lambda v: type(v).__name__ if isinstance(v, ExchangeError) else None)
def test_code_status_and_reason(error: ExchangeError, code: str, status: int, reason: str) -> None:
    assert (error.error, error.status, error.reason) == (code, status, reason)
    assert error.body()["error"] == code


def test_a_class_default_is_not_changed_by_an_instance() -> None:
    HttpRefusal("x", status=404)
    assert InvalidRequest("y").status == 400 and HttpRefusal.status == 400
    InvalidRequest("y", reason="bad_form")
    assert InvalidRequest.reason == "invalid_request"


def test_headers() -> None:
    assert MethodNotAllowed("x", allow=("OPTIONS", "POST")).headers() == {"Allow": "OPTIONS, POST"}
    assert PayloadTooLarge(1).body() == {"error": "invalid_request",
                                         "error_description": "the request body is larger than 1 bytes"}
    assert ServerError().body() == {"error": "server_error", "error_description": "internal error"}
    assert InvalidTarget("x").headers() == {}
