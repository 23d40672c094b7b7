"""Errors of the exchange, each carrying its RFC 6749 code and HTTP status."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class ExchangeError(Exception):
    """A refusal the HTTP layer renders as an RFC 6749 section 5.2 body.

    Each subclass names its RFC 6749 code, HTTP status and default reason in its class line, e.g.
    `class InvalidTarget(ExchangeError, error="invalid_target", status=403, reason="no_binding")`.
    """

    error = "invalid_request"
    status = 400
    # A short machine-readable reason for metrics and audit lines (bounded cardinality).
    reason = "invalid_request"

    def __init_subclass__(cls, *, error: str | None = None, status: int | None = None,
                          reason: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if error is not None:
            cls.error = error
        if status is not None:
            cls.status = status
        if reason is not None:
            cls.reason = reason

    def __init__(self, description: str, *, reason: str | None = None, **details: Any) -> None:
        super().__init__(description)
        self.description = description
        if reason is not None:
            self.reason = reason
        self.details: dict[str, Any] = details

    def body(self) -> dict[str, Any]:
        """Return the JSON error body (never holds a token)."""
        out: dict[str, Any] = {"error": self.error, "error_description": self.description}
        out.update(self.details)
        return out

    def headers(self) -> dict[str, str]:
        """HTTP headers this refusal needs besides the JSON body (none by default)."""
        return {}


class InvalidRequest(ExchangeError, error="invalid_request", status=400):
    """Malformed request, or a subject token that is bad, expired or untrusted."""


class HttpRefusal(InvalidRequest):
    """A request the HTTP layer refused before any exchange rule ran (unknown path, bad framing)."""

    def __init__(self, description: str, *, status: int) -> None:
        super().__init__(description, reason=f"http_{status}")
        self.status = status


class PayloadTooLarge(InvalidRequest, status=413, reason="too_large"):
    """The request body is larger than the service reads."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class RequestTimeout(InvalidRequest, status=408, reason="body_timeout"):
    """The client did not send its whole request body in time (the server's read deadline)."""

    def __init__(self) -> None:
        super().__init__("the request body did not arrive in time; send it in one go")


class MethodNotAllowed(InvalidRequest, status=405, reason="http_405"):
    """The path exists but not for this method; the answer names the allowed ones (RFC 9110 Allow)."""

    def __init__(self, description: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(description)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        """The Allow header."""
        return {"Allow": ", ".join(self.allow)} if self.allow else {}


class UnsupportedGrantType(ExchangeError, error="unsupported_grant_type", status=400,
                           reason="unsupported_grant_type"):
    """The grant type is not RFC 8693 token exchange."""


class InvalidTarget(ExchangeError, error="invalid_target", status=403, reason="no_binding"):
    """The token is valid but no binding lets it have the requested role."""


class TemporarilyUnavailable(ExchangeError, error="temporarily_unavailable", status=503, reason="unavailable"):
    """A dependency (GitLab keys, signing key, replay store) is not usable right now; retry after a while."""

    def __init__(self, description: str, *, reason: str | None = None, retry_after: float = 1,
                 **details: Any) -> None:
        super().__init__(description, reason=reason, **details)
        self.retry_after = max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        """Retry-After in whole seconds (clients such as `curl --retry` and `gitlab-sts login` honour it)."""
        return {"Retry-After": str(self.retry_after)}


class ServerError(ExchangeError, error="server_error", status=500, reason="internal_error"):
    """An unexpected failure inside the service; the caller learns nothing about internals."""

    def __init__(self) -> None:
        super().__init__("internal error")


class ConfigError(Exception):
    """A settings, bindings or keys file that cannot be used."""


@dataclass(frozen=True)
class FieldError:
    """One problem in a binding, naming the field as a dotted path."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class CompileError(Exception):
    """A binding that cannot be compiled; every problem names its field."""

    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(str(e) for e in self.errors)
