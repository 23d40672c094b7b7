"""One JSON audit line per decision, and JSON logging for everything else."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

AUDIT = logging.getLogger("gitlab_sts.audit")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
AUDIT_CLAIMS = ("project_path", "project_id", "ref", "ref_type", "pipeline_id", "job_id", "user_login",
                "environment", "runner_id")


def token_digest(token: str) -> str:
    """The SHA-256 of a token: what logs carry instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; extra fields become members."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record."""
        line = getattr(record, "_line", None)
        if line is not None:
            return str(line)  # an audit line, serialised once by audit()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr for the gitlab_sts loggers (idempotent)."""
    root = logging.getLogger("gitlab_sts")
    if any(getattr(h, "_gitlab_sts", False) for h in root.handlers):
        return
    # Every LogRecord otherwise looks up the thread and multiprocessing names; the JSON lines carry neither, and
    # one audit record per exchange makes that a measurable share of a request. Process ids stay on: gunicorn's
    # own log format prints them (%(process)d), and without them every worker exit logged a traceback.
    logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._gitlab_sts = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """The facts of one exchange decision; the token itself is only ever written as its SHA-256."""

    endpoint: str
    result: str  # issued, explained or denied
    reason: str  # "ok", or the refusal's bounded reason (also a metric label)
    token: str | None = None
    claims: dict[str, Any] | None = None
    binding: str | None = None
    role_arn: str | None = None
    jti: str | None = None
    kid: str | None = None
    error: str | None = None


def write_audit(event: AuditEvent) -> None:
    """Write one audit line for one decision (claims are picked, the token is only hashed)."""
    if not AUDIT.isEnabledFor(logging.INFO):
        return
    record: dict[str, Any] = {"event": "exchange", "endpoint": event.endpoint, "result": event.result,
                              "reason": event.reason}
    if event.token is not None:
        record["token_sha256"] = token_digest(event.token)
    claims = event.claims
    if claims:
        record["issuer"] = claims.get("iss") if isinstance(claims.get("iss"), str) else None
        for name in AUDIT_CLAIMS:
            if name in claims:
                record[name] = claims[name]
    for key, value in (("binding", event.binding), ("role_arn", event.role_arn), ("jti", event.jti),
                       ("kid", event.kid), ("error", event.error)):
        if value is not None:
            record[key] = value
    # The hot path: one json.dumps here instead of the generic formatter walking the LogRecord.
    line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "info",
            "logger": AUDIT.name, "message": f"exchange {event.result}", **record}
    AUDIT.info("exchange %s", event.result, extra={"_line": json.dumps(line, default=str, separators=(",", ":"))})
