"""AWS session tag and source identity rules (limits from the IAM session-tags page)."""

from __future__ import annotations

import functools
import re
import unicodedata

MAX_TAGS = 50
MAX_KEY = 128
MAX_VALUE = 256
_EXTRA = set("_.:/=+-@")
_SOURCE_IDENTITY = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)


def _allowed(c: str) -> bool:
    # AWS: [\p{L}\p{Z}\p{N}_.:/=+\-@]
    return c in _EXTRA or unicodedata.category(c)[0] in ("L", "Z", "N")


@functools.lru_cache(maxsize=4096)  # thousands of bindings name the same few tag keys
def key_problem(key: str) -> str | None:
    """Say why a string cannot be a session tag key, or None if it can."""
    if not 1 <= len(key) <= MAX_KEY:
        return f"tag keys must be 1-{MAX_KEY} characters"
    if key.lower().startswith("aws:"):
        return "tag keys must not start with 'aws:'"
    if not all(_allowed(c) for c in key):
        return "tag keys may hold only letters, digits, spaces and _.:/=+-@"
    return None


# The ASCII characters _allowed accepts: lets the common all-ASCII value skip the per-character loop.
_ASCII_ALLOWED = re.compile(r"[A-Za-z0-9 _.:/=+\-@]*")


def sanitise_value(value: str) -> str:
    """Replace characters AWS refuses in a tag value with '_' and cut it to 256 characters."""
    if _ASCII_ALLOWED.fullmatch(value):
        return value[:MAX_VALUE]
    return "".join(c if _allowed(c) else "_" for c in value)[:MAX_VALUE]


def sanitise_source_identity(value: str) -> str | None:
    """Map a claim to a valid source identity (2-64 of [\\w+=,.@-]), or None if impossible."""
    cleaned = "".join(c if re.match(r"[\w+=,.@-]", c, re.ASCII) else "_" for c in value)[:64]
    return cleaned if _SOURCE_IDENTITY.match(cleaned) else None
