"""core.timefmt: the one RFC 3339 parser (callers word its problems) and the formatter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gitlab_sts.core.timefmt import TimestampError, parse_rfc3339, parse_rfc3339_or_none, rfc3339

T = datetime(2030, 1, 20, 12, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2030-01-20T12:30:05Z", "2030-01-20T14:30:05+02:00", "2030-01-20T12:30:05.000Z"])
def test_parses_to_utc(text: str) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == T and parsed.tzinfo == UTC
    assert rfc3339(parsed) == "2030-01-20T12:30:05Z"


@pytest.mark.parametrize(("value", "problem"), [
    (None, "type"), (1_800_000_000, "type"), (b"2030-01-20T12:30:05Z", "type"),
    ("next tuesday", "format"), ("", "format"), ("2030-13-01T00:00:00Z", "format"),
    ("2030-01-20T12:30:05", "zone"), ("2030-01-20", "zone"),
])
def test_refusals_say_which_problem(value: object, problem: str) -> None:
    with pytest.raises(TimestampError) as exc:
        parse_rfc3339(value)
    assert exc.value.problem == problem
    assert parse_rfc3339_or_none(value) is None


def test_formatter_converts_to_utc() -> None:
    assert rfc3339(T.astimezone(timezone(timedelta(hours=-5)))) == "2030-01-20T12:30:05Z"
