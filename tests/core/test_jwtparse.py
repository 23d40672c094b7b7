"""Strict compact-JWS parsing before any key is chosen."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.jwtparse import b64url_decode, parse_compact, strict_json_object
from tests.core.conftest import DEEP_JSON, b64url, json_segment

HEADER = json_segment({"alg": "RS256", "kid": "k"})
CLAIMS = json_segment({"iss": "https://gitlab.example.com", "n": 1})
SIG = b64url(b"signature")


def test_well_formed_token_parses() -> None:
    parsed = parse_compact(f"{HEADER}.{CLAIMS}.{SIG}", max_bytes=4096)
    assert parsed.header == {"alg": "RS256", "kid": "k"}
    assert parsed.claims == {"iss": "https://gitlab.example.com", "n": 1}


def test_empty_signature_segment_still_parses() -> None:
    # alg=none tokens parse; refusing them is verify's job (tested there).
    assert parse_compact(f"{HEADER}.{CLAIMS}.", max_bytes=4096).header["alg"] == "RS256"


def _seg(raw: bytes) -> str:
    return b64url(raw)


@pytest.mark.parametrize(("token", "reason", "words"), [
    ("a.b", "malformed_token", "three dot-separated"),
    ("a.b.c.d", "malformed_token", "three dot-separated"),
    ("", "malformed_token", "three dot-separated"),
    (f"{HEADER}.{CLAIMS}", "malformed_token", "three dot-separated"),
    (f"{HEADER}=.{CLAIMS}.{SIG}", "malformed_token", "not base64url"),
    (f"{HEADER}.{CLAIMS}.{SIG}+/", "malformed_token", "not base64url"),
    (f"{HEADER} .{CLAIMS}.{SIG}", "malformed_token", "not base64url"),
    (f"{HEADER}\n.{CLAIMS}.{SIG}", "malformed_token", "not base64url"),
    (f"{HEADER}.{CLAIMS}.{SIG}\n", "malformed_token", "not base64url"),
    (f"{HEADER}.{CLAIMS}.A", "malformed_token", "not base64url"),
    (_seg(b'not json') + "." + CLAIMS + "." + SIG, "malformed_token", "not valid JSON"),
    (HEADER + "." + _seg(b'[1, 2]') + "." + SIG, "malformed_token", "not a JSON object"),
    (HEADER + "." + _seg(b'"str"') + "." + SIG, "malformed_token", "not a JSON object"),
    (HEADER + "." + _seg(b"\xff\xfe{}") + "." + SIG, "malformed_token", "not valid UTF-8"),
    (HEADER + "." + _seg(b'{"exp": NaN}') + "." + SIG, "malformed_token", "non-standard JSON constant"),
    (HEADER + "." + _seg(b'{"exp": Infinity}') + "." + SIG, "malformed_token", "non-standard JSON constant"),
    (HEADER + "." + _seg(b'{"sub": "a", "sub": "b"}') + "." + SIG, "malformed_token", "duplicate member 'sub'"),
    (_seg(b'{"alg": "RS256", "alg": "none"}') + "." + CLAIMS + "." + SIG, "malformed_token", "duplicate member"),
    (HEADER + "." + _seg(b'{"a": {"b": 1, "b": 2}}') + "." + SIG, "malformed_token", "duplicate member 'b'"),
    (HEADER + "." + _seg(b'{"n": 1' + b"0" * 5000 + b"}") + "." + SIG, "malformed_token", "not valid JSON"),
    (HEADER + "." + _seg(b'{"a": ' + b"[" * DEEP_JSON + b"]" * DEEP_JSON + b"}") + "." + SIG, "malformed_token",
     "not valid JSON"),
    (HEADER + "." + _seg(b'{"a": ' * DEEP_JSON + b"1" + b"}" * DEEP_JSON) + "." + SIG, "malformed_token", "JSON"),
    (f"{HEADER}.{CLAIMS}.{SIG}" + "A" * 70000, "token_too_large", "larger than"),
], ids=["two-parts", "four-parts", "empty", "no-signature-part", "padding", "standard-alphabet", "space", "newline",
        "trailing-newline", "impossible-length", "header-not-json", "claims-array", "claims-string", "non-utf8",
        "nan", "infinity", "duplicate-claim", "duplicate-header", "nested-duplicate", "huge-integer",
        "deep-array-nesting", "deep-object-nesting", "oversized"])
def test_malformed_tokens_refused(token: str, reason: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_compact(token, max_bytes=65536)
    assert exc.value.reason == reason
    assert words in exc.value.description
    assert exc.value.error == "invalid_request"
    assert exc.value.status == 400


def test_size_limit_is_inclusive() -> None:
    token = f"{HEADER}.{CLAIMS}.{SIG}"
    assert parse_compact(token, max_bytes=len(token)).claims["n"] == 1
    with pytest.raises(InvalidRequest, match="larger than"):
        parse_compact(token, max_bytes=len(token) - 1)


def test_error_never_echoes_token_content() -> None:
    secret = "very-secret-value-9f8e7d"
    token = HEADER + "." + _seg(b'{"x": "' + secret.encode() + b'", bad') + "." + SIG
    with pytest.raises(InvalidRequest) as exc:
        parse_compact(token, max_bytes=8192)
    assert secret not in str(exc.value.body())


@pytest.mark.parametrize(("segment", "raw"), [
    ("", b""), ("QQ", b"A"), ("QUI", b"AB"), ("QUJD", b"ABC"), ("_-8", b"\xff\xef"),
], ids=["empty", "one-byte", "two-bytes", "three-bytes", "url-alphabet"])
def test_b64url_decode(segment: str, raw: bytes) -> None:
    assert b64url_decode(segment) == raw


@pytest.mark.parametrize("segment", ["QQ==", "Q", "QUJD\n", "+/", "QU I"], ids=["padded", "length-1", "newline",
                                                                               "std-alphabet", "space"])
def test_b64url_decode_refuses(segment: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(segment)


def test_strict_json_object_accepts_nested_unique_members() -> None:
    assert strict_json_object(b'{"a": {"b": [1, {"c": null}]}}') == {"a": {"b": [1, {"c": None}]}}


def _outcome(token: str, max_bytes: int) -> str:
    """'parsed' or the InvalidRequest reason; any other exception propagates and fails the property."""
    try:
        parsed = parse_compact(token, max_bytes=max_bytes)
    except InvalidRequest as exc:
        return exc.reason
    return "parsed" if isinstance(parsed.header, dict) and isinstance(parsed.claims, dict) else "bad"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parse_compact_raises_only_invalid_request_on_any_text(text: str) -> None:
    assert _outcome(text, 200) in ("parsed", "malformed_token", "token_too_large")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120) | _json.map(lambda v: repr(v).encode()), st.binary(max_size=60))
def test_parse_compact_raises_only_invalid_request_on_any_segments(payload: bytes, header: bytes) -> None:
    # Segments that are valid base64url get past the alphabet check and exercise the JSON parser.
    assert _outcome(f"{b64url(header)}.{b64url(payload)}.{b64url(b'x')}", 2000) in ("parsed", "malformed_token")
