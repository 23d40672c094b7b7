"""Anchored glob patterns for refs and environments."""

from __future__ import annotations

import functools
import re


# Thousands of bindings share a few patterns (main, release/*); compiled patterns are immutable.
@functools.lru_cache(maxsize=4096)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob: `*` matches within one path segment, `**` across `/`, `?` one character.

    The whole value must match (anchoring is a security property: `main` never matches `main-x`).
    """
    if not pattern:
        raise ValueError("empty pattern")
    if any(ord(c) < 0x20 for c in pattern):
        raise ValueError("pattern holds control characters")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)
