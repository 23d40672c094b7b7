"""core.jose: the hot-path JWS code gives the same bytes and the same verdicts as joserfc's own compact API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey

from gitlab_sts.core.jose import header_segment, sign_compact, verify_signature
from gitlab_sts.core.jwtparse import b64url_decode, b64url_encode, parse_compact

CLAIMS: dict[str, Any] = {"iss": "https://sts.example.com", "sub": "system:gitlabawsbinding:a:b",
                          "aud": "sts.amazonaws.com", "iat": 1_900_000_000, "exp": 1_900_000_900, "jti": "j-1",
                          "https://aws.amazon.com/tags": {"principal_tags": {"env": ["prod"]}}, "note": "caf\u00e9"}
RSA = RSAKey.generate_key(2048, auto_kid=True)
EC = ECKey.generate_key("P-256", auto_kid=True)


def test_rs256_bytes_equal_joserfc_jwt_encode() -> None:
    # PKCS#1 v1.5 signatures are deterministic, so the whole compact token must be identical.
    ours = sign_compact(dict(CLAIMS), RSA, "RS256", str(RSA.kid))
    theirs = jwt.encode({"alg": "RS256", "kid": RSA.kid, "typ": "JWT"}, dict(CLAIMS), RSA, algorithms=["RS256"])
    assert ours == theirs


def test_es256_verifies_with_joserfc_and_pyjwt() -> None:
    token = sign_compact(dict(CLAIMS), EC, "ES256", str(EC.kid))
    header, payload, signature = token.split(".")
    assert json.loads(b64url_decode(header)) == {"typ": "JWT", "alg": "ES256", "kid": EC.kid}
    assert len(b64url_decode(signature)) == 64  # raw r||s, not DER
    assert json.loads(jws.deserialize_compact(token, EC, algorithms=["ES256"]).payload) == CLAIMS
    public = EC.as_dict(private=False)
    decoded = pyjwt.decode(token, pyjwt.PyJWK(public).key, algorithms=["ES256"], audience="sts.amazonaws.com",
                           options={"verify_exp": False, "verify_iat": False})
    assert decoded == CLAIMS


def test_header_segment_is_cached_per_key() -> None:
    assert header_segment("RS256", "k1") is header_segment("RS256", "k1")
    assert header_segment("RS256", "k1") != header_segment("RS256", "k2")


def _token(key: RSAKey | ECKey, alg: str, header: dict[str, Any] | None = None) -> str:
    head = header if header is not None else {"typ": "JWT", "alg": alg, "kid": key.kid}
    signing_input = f"{b64url_encode(json.dumps(head).encode())}.{b64url_encode(json.dumps(CLAIMS).encode())}"
    model = jws.JWSRegistry(algorithms=[alg]).get_alg(alg)
    return f"{signing_input}.{b64url_encode(model.sign(signing_input.encode(), key))}"


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256")])
def test_verify_agrees_with_joserfc(key: RSAKey | ECKey, alg: str) -> None:
    good = _token(key, alg)
    parsed = parse_compact(good, max_bytes=65536)
    assert verify_signature(parsed, key, alg)
    jws.deserialize_compact(good, key, algorithms=[alg])  # joserfc agrees
    other = RSAKey.generate_key(2048) if alg == "RS256" else ECKey.generate_key("P-256")
    assert not verify_signature(parsed, other, alg)


def _flip_last_signature_char(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"


@pytest.mark.parametrize("case", ["tampered_payload", "tampered_signature", "wrong_alg_for_key", "crit",
                                  "unknown_header_member", "kid_not_string", "es_signature_wrong_length"])
def test_verify_refuses_what_joserfc_refuses(case: str) -> None:
    key: RSAKey | ECKey = RSA
    alg = "RS256"
    token = _token(RSA, "RS256")
    if case == "tampered_payload":
        head, _, sig = token.split(".")
        token = f"{head}.{b64url_encode(json.dumps({**CLAIMS, 'sub': 'x'}).encode())}.{sig}"
    elif case == "tampered_signature":
        token = _flip_last_signature_char(token)
    elif case == "wrong_alg_for_key":
        alg = "ES256"
    elif case == "crit":
        token = _token(RSA, "RS256", {"alg": "RS256", "kid": RSA.kid, "crit": ["exp"], "exp": 1})
    elif case == "unknown_header_member":
        token = _token(RSA, "RS256", {"alg": "RS256", "kid": RSA.kid, "x-extra": 1})
    elif case == "kid_not_string":
        token = _token(RSA, "RS256", {"alg": "RS256", "kid": 7})
    elif case == "es_signature_wrong_length":
        key, alg = EC, "ES256"
        head, payload, _ = _token(EC, "ES256").split(".")
        token = f"{head}.{payload}.{b64url_encode(bytes(63))}"
    parsed = parse_compact(token, max_bytes=65536)
    assert not verify_signature(parsed, key, alg)
    with pytest.raises(Exception):  # noqa: B017,PT011 (joserfc raises several kinds; the point is that it refuses)
        jws.deserialize_compact(token, key, algorithms=[alg])


def test_minted_token_round_trip_through_parse() -> None:
    now = datetime.now(UTC)
    claims = {**CLAIMS, "iat": int(now.timestamp()), "exp": int((now + timedelta(minutes=5)).timestamp())}
    token = sign_compact(claims, RSA, "RS256", str(RSA.kid))
    parsed = parse_compact(token, max_bytes=65536)
    assert parsed.claims == claims
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()
    assert verify_signature(parsed, RSA, "RS256")
