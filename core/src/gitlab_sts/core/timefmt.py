"""The one timestamp format of our files, statuses and answers."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime) -> str:
    """UTC, whole seconds, trailing Z (e.g. 2026-11-26T09:53:26Z)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_or_none(value: datetime | None) -> str | None:
    """rfc3339, with None kept as None (for optional status fields)."""
    return None if value is None else rfc3339(value)


def parse_rfc3339(value: object) -> datetime | None:
    """A timestamp string that carries a time zone, in UTC; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else None
