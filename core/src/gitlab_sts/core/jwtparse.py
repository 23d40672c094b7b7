"""Strict, signature-agnostic parsing of compact JWTs (before any key is chosen)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from gitlab_sts.core.errors import InvalidRequest

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class UnverifiedJWT:
    """The decoded parts of a compact JWS whose signature is not yet checked."""

    header: dict[str, Any]
    claims: dict[str, Any]
    # What the signature covers (the first two segments, as sent) and the decoded signature: verification
    # uses these, so the token is split and decoded exactly once.
    signing_input: bytes = b""
    signature: bytes = b""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could disagree on which value wins: refuse the token outright.
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# Built once: json.loads(...) with hooks constructs a decoder on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_no_constants)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (what JWS segments use)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url, refusing any other alphabet or padding."""
    # fullmatch, not match: `$` would also match before a trailing newline, which base64 then ignores.
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def strict_json_object(raw: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object with unique members."""
    text = raw.decode("utf-8")  # raises UnicodeDecodeError on invalid UTF-8
    value = _DECODER.decode(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_compact(token: str, *, max_bytes: int) -> UnverifiedJWT:
    """Split and decode a compact JWS, refusing anything malformed or oversized."""
    if len(token) > max_bytes:
        raise InvalidRequest(
            f"the subject_token is larger than the {max_bytes}-byte limit", reason="token_too_large"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidRequest(
            "the subject_token is not a compact JWS (expected three dot-separated parts)",
            reason="malformed_token",
        )
    try:
        header = strict_json_object(b64url_decode(parts[0]))
        claims = strict_json_object(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    # RecursionError: json gives up on deeply nested arrays/objects, which fit well within the size limit.
    except (ValueError, UnicodeDecodeError, binascii.Error, RecursionError) as exc:
        raise InvalidRequest(
            f"the subject_token is malformed: {_describe(exc)}", reason="malformed_token"
        ) from None
    # The segments are base64url (checked above), hence ASCII.
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return UnverifiedJWT(header=header, claims=claims, signing_input=signing_input, signature=signature)


def _describe(exc: Exception) -> str:
    # Never echo token content: describe the failure by its kind only.
    if isinstance(exc, UnicodeDecodeError):
        return "a segment is not valid UTF-8"
    message = str(exc)
    if message.startswith("duplicate member"):
        return message
    if message in ("not base64url", "not a JSON object") or message.startswith("non-standard"):
        return message
    return "a segment is not valid JSON"
