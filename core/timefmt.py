"""The one timestamp format of our files, statuses and answers."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime) -> str:
    """UTC, whole seconds, trailing Z (e.g. 2026-11-26T09:53:26Z)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
