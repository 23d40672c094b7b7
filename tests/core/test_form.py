"""core.exchange.parse_urlencoded: the form body as parse_qsl(keep_blank_values=True) reads it, strict UTF-8."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.exchange import MAX_FORM_FIELDS, parse_urlencoded


@pytest.mark.parametrize(("body", "expected"), [
    (b"", {}),
    (b"a=1&b=2", {"a": ["1"], "b": ["2"]}),
    (b"a=1&a=2", {"a": ["1", "2"]}),  # kept: parse_form refuses repeated fields with a clear message
    (b"a&b=", {"a": [""], "b": [""]}),
    (b"&&a=1&", {"a": ["1"]}),
    (b"k=x%3Dy+z%2B", {"k": ["x=y z+"]}),
    (b"caf%C3%A9=%E2%82%AC", {"caf\u00e9": ["\u20ac"]}),
    (b"t=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", {"t": ["eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"]}),
])
def test_fields(body: bytes, expected: dict[str, list[str]]) -> None:
    assert parse_urlencoded(body) == expected


@pytest.mark.parametrize(("body", "words"), [
    (b"a=\xff", "not valid UTF-8"),
    (b"a=%ff", "not valid UTF-8"),
    (b"&".join([b"a=1"] * (MAX_FORM_FIELDS + 1)), "more than"),
])
def test_refused(body: bytes, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as info:
        parse_urlencoded(body)
    assert info.value.reason == "bad_form"


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=MAX_FORM_FIELDS))
def test_same_as_parse_qsl(pairs: list[tuple[str, str]]) -> None:
    body = urllib.parse.urlencode(pairs).encode()
    expected: dict[str, list[str]] = {}
    for name, value in urllib.parse.parse_qsl(body.decode(), keep_blank_values=True):
        expected.setdefault(name, []).append(value)
    assert parse_urlencoded(body) == expected
