"""The one timestamp format of our files, statuses and answers, and its one parser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def rfc3339(value: datetime) -> str:
    """UTC, whole seconds, trailing Z (e.g. 2026-11-26T09:53:26Z)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_or_none(value: datetime | None) -> str | None:
    """rfc3339, with None kept as None (for optional status fields)."""
    return None if value is None else rfc3339(value)


class TimestampError(ValueError):
    """Why a value is not a usable timestamp; `problem` lets each caller word it for its own file."""

    def __init__(self, problem: Literal["type", "format", "zone"], message: str) -> None:
        super().__init__(message)
        self.problem = problem


def parse_rfc3339(value: object) -> datetime:
    """A timestamp string that carries a time zone, in UTC; raises TimestampError saying what is wrong."""
    if not isinstance(value, str):
        raise TimestampError("type", "must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TimestampError("format", "is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise TimestampError("zone", "must carry a time zone")
    return parsed.astimezone(UTC)


def parse_rfc3339_or_none(value: object) -> datetime | None:
    """parse_rfc3339, with None for anything that is not a timestamp (for optional status fields)."""
    try:
        return parse_rfc3339(value)
    except TimestampError:
        return None
