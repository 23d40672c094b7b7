"""AWS session tag keys and values, and source identity, sanitised to what STS accepts."""

from __future__ import annotations

import pytest

from gitlab_sts.core.tags import MAX_KEY, MAX_TAGS, MAX_VALUE, key_problem, sanitise_source_identity, sanitise_value


def test_limits_match_the_session_tags_page() -> None:
    assert (MAX_TAGS, MAX_KEY, MAX_VALUE) == (50, 128, 256)


@pytest.mark.parametrize(("key", "problem"), [
    ("project_path", None),
    ("Project Path", None),
    ("team:env/x=y+z-w@v.u", None),
    ("ÜberTeam", None),
    ("プロジェクト", None),
    ("k" * 128, None),
    ("k" * 129, "1-128"),
    ("", "1-128"),
    ("aws:project", "aws:"),
    ("AWS:Project", "aws:"),
    ("awsproject", None),
    ("project#id", "only letters"),
    ("project,id", "only letters"),
    ("tab\there", "only letters"),
    ("emoji🙂", "only letters"),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_key_problem(key: str, problem: str | None) -> None:
    found = key_problem(key)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(("value", "expected"), [
    ("platform/payments", "platform/payments"),
    ("release/1.2.3", "release/1.2.3"),
    ("user@example.com", "user@example.com"),
    ("a=b+c:d-e_f", "a=b+c:d-e_f"),
    ("with space", "with space"),
    ("Zürich", "Zürich"),
    ("東京", "東京"),
    ("٤٢", "٤٢"),
    ("feature#12", "feature_12"),
    ("a,b;c", "a_b_c"),
    ("quote\"'", "quote__"),
    ("new\nline", "new_line"),
    ("emoji🙂", "emoji_"),
    ("e\u0301", "e_"),
    ("", ""),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_sanitise_value(value: str, expected: str) -> None:
    assert sanitise_value(value) == expected


@pytest.mark.parametrize(("length", "kept"), [(255, 255), (256, 256), (257, 256), (10_000, 256)])
def test_values_truncated_to_256(length: int, kept: int) -> None:
    assert sanitise_value("x" * length) == "x" * kept


def test_truncation_happens_after_replacement() -> None:
    assert sanitise_value("#" * 300) == "_" * 256


@pytest.mark.parametrize(("value", "expected"), [
    ("alice", "alice"),
    ("alice.smith@example.com", "alice.smith@example.com"),
    ("a+b=c,d-e_f", "a+b=c,d-e_f"),
    ("al", "al"),
    ("a", None),
    ("", None),
    ("bob the builder", "bob_the_builder"),
    ("jürgen", "j_rgen"),
    ("x" * 64, "x" * 64),
    ("x" * 100, "x" * 64),
    ("a/b", "a_b"),
], ids=lambda v: repr(v) if isinstance(v, str) else None)
def test_sanitise_source_identity(value: str, expected: str | None) -> None:
    assert sanitise_source_identity(value) == expected
