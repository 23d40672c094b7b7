"""Anchored globs over refs and environments."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_sts.core.patterns import glob_to_regex


@pytest.mark.parametrize(("pattern", "value", "matches"), [
    ("main", "main", True),
    ("main", "main-x", False),
    ("main", "x-main", False),
    ("main", "Main", False),
    ("main", "main\n", False),
    ("release/*", "release/1.0", True),
    ("release/*", "release/", True),
    ("release/*", "release/1.0/hotfix", False),
    ("release/*", "release", False),
    ("release/*", "xrelease/1.0", False),
    ("release/**", "release/1.0/hotfix", True),
    ("release/**", "release/1.0", True),
    ("**", "any/thing/at/all", True),
    ("*", "feature", True),
    ("*", "feature/x", False),
    ("v*.*", "v1.2", True),
    ("v*.*", "v1x2", False),
    ("v?.0", "v1.0", True),
    ("v?.0", "v10.0", False),
    ("v?", "v/", False),
    ("feature/**/final", "feature/a/b/final", True),
    ("feature/**/final", "feature/final", False),
    ("a.b", "axb", False),
    ("[main]", "m", False),
    ("[main]", "[main]", True),
    ("a+", "aa", False),
    ("(a|b)", "a", False),
    ("$", "$", True),
    ("übung/*", "übung/1", True),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_glob(pattern: str, value: str, matches: bool) -> None:
    assert bool(glob_to_regex(pattern).fullmatch(value)) is matches


@pytest.mark.parametrize("pattern", ["", "main\n", "a\x00b", "tab\there"], ids=["empty", "newline", "nul", "tab"])
def test_bad_patterns_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="empty|control"):
        glob_to_regex(pattern)


_literal = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(_literal, st.text(min_size=1, max_size=6))
def test_literal_pattern_matches_only_itself(pattern: str, suffix: str) -> None:
    """Anchoring: no glob character means the value must equal the pattern exactly."""
    plain = pattern.replace("*", "").replace("?", "") or "x"
    rx = glob_to_regex(plain)
    assert rx.fullmatch(plain)
    assert not rx.fullmatch(plain + suffix)
    assert not rx.fullmatch(suffix + plain)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(re.compile(r"[a-z0-9._-]{1,8}"), fullmatch=True),
       st.lists(st.from_regex(re.compile(r"[a-z0-9._-]{1,6}"), fullmatch=True), min_size=1, max_size=4))
def test_single_star_stays_in_one_segment(prefix: str, segments: list[str]) -> None:
    """`prefix/*` matches exactly one more segment; `prefix/**` matches any number."""
    value = prefix + "/" + "/".join(segments)
    assert bool(glob_to_regex(prefix + "/*").fullmatch(value)) is (len(segments) == 1)
    assert glob_to_regex(prefix + "/**").fullmatch(value)
    assert not glob_to_regex(prefix + "/**").fullmatch("x" + value)
