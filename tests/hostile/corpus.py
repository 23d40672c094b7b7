"""Hostile GitLab-looking tokens: each must be refused (400 invalid_request, or 413 before parsing)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc.jwk import RSAKey

from gitlab_sts.core.jwtparse import b64url_encode as b64
from gitlab_sts.testing.gitlab import FakeGitLab, job_claims

GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"



def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the example deploy-staging binding would accept, with overrides."""
    out = job_claims(GITLAB, STS, environment="staging", environment_protected="false")
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _rs256(key: RSAKey, header: dict[str, Any], payload: bytes) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
    private = key.private_key
    assert private is not None
    return signing_input + "." + b64(private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def _raw_header(g: FakeGitLab, header_json: bytes, payload: bytes) -> str:
    """Sign a header given as raw bytes (to send JSON a library would never produce)."""
    signing_input = b64(header_json) + "." + b64(payload)
    private = g.ci_key.private_key
    assert private is not None
    return signing_input + "." + b64(private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def _hs256_with_public_key(g: FakeGitLab) -> str:
    # Algorithm confusion: HMAC keyed with the RSA public key that the verifier holds.
    public = g.ci_key.public_key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": g.ci_key.kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims()).encode())
    return signing_input + "." + b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())


def _hs256_with_jwk_n(g: FakeGitLab) -> str:
    n = g.ci_key.as_dict(private=False)["n"].encode()
    header = {"alg": "HS256", "typ": "JWT", "kid": g.ci_key.kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims()).encode())
    return signing_input + "." + b64(hmac.new(n, signing_input.encode(), hashlib.sha256).digest())


def _signed(g: FakeGitLab, header: dict[str, Any] | None = None, **overrides: Any) -> str:
    return g.sign(claims(**overrides), header)


def _raw(g: FakeGitLab, payload: str, header: dict[str, Any] | None = None) -> str:
    return g.sign_raw(payload, header)


def build(g: FakeGitLab) -> dict[str, str]:
    """Every hostile token by name (g signs as the trusted GitLab; attacker keys are made here)."""
    attacker = RSAKey.generate_key(2048, private=True)
    attacker_jwk = attacker.as_dict(private=False)
    ok = claims()
    good_payload = json.dumps(ok).encode()
    head = {"alg": "RS256", "typ": "JWT", "kid": g.ci_key.kid}
    cases: dict[str, Callable[[], str]] = {
        # Algorithms
        "alg-none-empty-signature": lambda: b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(good_payload) + ".",
        "alg-None-capitalised": lambda: b64(b'{"alg":"None"}') + "." + b64(good_payload) + ".",
        "alg-none-with-real-signature": lambda: _signed(g, {"alg": "none"}),
        "alg-missing": lambda: _raw_header(g, json.dumps({"typ": "JWT", "kid": g.ci_key.kid}).encode(), good_payload),
        "alg-hs256-keyed-with-public-pem": lambda: _hs256_with_public_key(g),
        "alg-hs256-keyed-with-modulus": lambda: _hs256_with_jwk_n(g),
        "alg-rs512-label-on-rs256-signature": lambda: _signed(g, {"alg": "RS512"}),
        "alg-es256-label": lambda: _signed(g, {"alg": "ES256"}),
        "alg-array": lambda: _signed(g, {"alg": ["RS256"]}),
        # Key-pointing and processing headers
        "jku-to-attacker": lambda: _rs256(attacker, {**head, "jku": "https://evil.example/jwks.json"}, good_payload),
        "x5u-to-attacker": lambda: _rs256(attacker, {**head, "x5u": "https://evil.example/cert.pem"}, good_payload),
        "jwk-embedded-attacker-key": lambda: _rs256(attacker, {**head, "jwk": attacker_jwk}, good_payload),
        "jwk-embedded-with-gitlab-signature": lambda: _signed(g, {"jwk": attacker_jwk}),
        "x5c-embedded": lambda: _signed(g, {"x5c": ["MIIB"]}),
        "crit-unknown": lambda: _signed(g, {"crit": ["exp"], "exp": 1}),
        "crit-b64-false": lambda: _signed(g, {"crit": ["b64"], "b64": False}),
        "zip-deflate": lambda: _signed(g, {"zip": "DEF"}),
        "enc-jwe-header": lambda: _signed(g, {"enc": "A256GCM"}),
        "typ-not-jwt": lambda: _signed(g, {"typ": "at+jwt"}),
        # kid tricks
        "kid-path-traversal": lambda: _rs256(attacker, {**head, "kid": "../../etc/passwd"}, good_payload),
        "kid-path-traversal-gitlab-signed": lambda: _signed(g, {"kid": "../../../../dev/null"}),
        "kid-sql": lambda: _rs256(attacker, {**head, "kid": "' OR '1'='1"}, good_payload),
        "kid-very-long": lambda: _rs256(attacker, {**head, "kid": "k" * 8000}, good_payload),
        "kid-null-byte": lambda: _rs256(attacker, {**head, "kid": g.ci_key.kid + "\u0000"}, good_payload),
        "kid-number": lambda: _signed(g, {"kid": 1}),
        "kid-object": lambda: _signed(g, {"kid": {"$ne": ""}}),
        "kid-null": lambda: _raw_header(g, b'{"alg":"RS256","typ":"JWT","kid":null}', good_payload),
        "attacker-key-right-kid": lambda: _rs256(attacker, head, good_payload),
        # Duplicates and nesting
        "duplicate-iss-claim": lambda: _raw(g, json.dumps(ok)[:-1] + ', "iss": "https://evil.example"}'),
        "duplicate-aud-claim": lambda: _raw(g, json.dumps(ok)[:-1] + f', "aud": "{STS}"}}'),
        "duplicate-alg-header": lambda: _raw_header(
            g, b'{"alg":"RS256","kid":"%s","alg":"none"}' % g.ci_key.kid.encode(), good_payload),
        "nested-claims-object": lambda: _signed(g, project_path={"path": "platform/payments"}),
        "deeply-nested-claim": lambda: _raw(g, json.dumps(ok)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"),
        "payload-is-array": lambda: _raw(g, json.dumps([ok])),
        "payload-is-string": lambda: _raw(g, json.dumps("claims")),
        # Sizes and encodings
        "token-100kb": lambda: _signed(g, padding_claim="A" * 100_000),
        "token-just-over-limit": lambda: _signed(g, padding_claim="A" * 16_000),
        "payload-not-utf8": lambda: b64(json.dumps(head).encode()) + "." + b64(b'{"iss":"\xff\xfe"}') + "." + b64(b"s"),
        "payload-latin1-signed": lambda: _raw_header(g, json.dumps(head).encode(),
                                                     json.dumps(ok).encode()[:-1] + b', "x": "\xe9"}'),
        "payload-utf16": lambda: _raw_header(g, json.dumps(head).encode(), json.dumps(ok).encode("utf-16")),
        "padding-in-segments": lambda: _signed(g).replace(".", "==.", 1),
        "standard-base64-alphabet": lambda: _signed(g, user_login="a?>?>" * 7).replace("-", "+").replace("_", "/"),
        "four-segments": lambda: _signed(g) + ".extra",
        "two-segments": lambda: ".".join(_signed(g).split(".")[:2]),
        "whitespace-inside": lambda: _signed(g).replace(".", " .", 1),
        "empty-signature": lambda: _signed(g).rsplit(".", 1)[0] + ".",
        "signature-of-another-token": lambda: (_signed(g).rsplit(".", 1)[0] + "."
                                               + _signed(g, job_id="9").rsplit(".", 1)[1]),
        # JSON oddities
        "json-nan-exp": lambda: _raw(g, json.dumps(ok).replace(f'"exp": {ok["exp"]}', '"exp": NaN')),
        "json-infinity-exp": lambda: _raw(g, json.dumps(ok).replace(f'"exp": {ok["exp"]}', '"exp": Infinity')),
        "exp-huge-integer": lambda: _raw(g, json.dumps(ok).replace(f'"exp": {ok["exp"]}', '"exp": ' + "9" * 400)),
        "exp-float": lambda: _signed(g, exp=float(ok["exp"])),
        "exp-string": lambda: _signed(g, exp=str(ok["exp"])),
        "exp-bool": lambda: _signed(g, exp=True),
        "exp-negative": lambda: _signed(g, exp=-1),
        "exp-zero": lambda: _signed(g, exp=0),
        "iat-negative": lambda: _signed(g, iat=-(2**62)),
        "iat-far-future": lambda: _signed(g, iat=2**62),
        "nbf-far-future": lambda: _signed(g, nbf=2**53),
        "iat-zero": lambda: _signed(g, iat=0, nbf=None),
        "exp-beyond-2-53": lambda: _signed(g, exp=2**53 + 1),
        "exp-exponent-notation": lambda: _raw(g, json.dumps(ok).replace(f'"exp": {ok["exp"]}', '"exp": 1e300')),
        # Claims of the wrong type where GitLab emits strings
        "project-id-integer": lambda: _signed(g, project_id=4321),
        "project-id-array": lambda: _signed(g, project_id=["4321"]),
        "project-id-unicode-digits": lambda: _signed(g, project_id="\u0664\u0663\u0662\u0661"),
        "ref-array": lambda: _signed(g, ref=["main"]),
        "ref-protected-bool": lambda: _signed(g, ref_protected=True),
        "runner-id-string": lambda: _signed(g, runner_id="12"),
        "runner-id-bool": lambda: _signed(g, runner_id=True),
        "aud-object": lambda: _signed(g, aud={"0": STS}),
        "aud-empty-list": lambda: _signed(g, aud=[]),
        "aud-other": lambda: _signed(g, aud="sts.amazonaws.com"),
        "iss-array": lambda: _signed(g, iss=[GITLAB]),
        "iss-trailing-slash": lambda: _signed(g, iss=GITLAB + "/"),
        "iss-other": lambda: _signed(g, iss="https://gitlab.evil.example"),
        "missing-exp": lambda: _signed(g, exp=None),
        "missing-project-id": lambda: _signed(g, project_id=None),
        "expired": lambda: _signed(g, iat=ok["iat"] - 7200, nbf=ok["iat"] - 7200, exp=ok["iat"] - 3600),
    }
    return {name: make() for name, make in cases.items()}


NAMES = [
    "alg-none-empty-signature", "alg-None-capitalised", "alg-none-with-real-signature", "alg-missing",
    "alg-hs256-keyed-with-public-pem", "alg-hs256-keyed-with-modulus", "alg-rs512-label-on-rs256-signature",
    "alg-es256-label", "alg-array", "jku-to-attacker", "x5u-to-attacker", "jwk-embedded-attacker-key",
    "jwk-embedded-with-gitlab-signature", "x5c-embedded", "crit-unknown", "crit-b64-false", "zip-deflate",
    "enc-jwe-header", "typ-not-jwt", "kid-path-traversal", "kid-path-traversal-gitlab-signed", "kid-sql",
    "kid-very-long", "kid-null-byte", "kid-number", "kid-object", "kid-null", "attacker-key-right-kid",
    "duplicate-iss-claim", "duplicate-aud-claim", "duplicate-alg-header", "nested-claims-object",
    "deeply-nested-claim", "payload-is-array", "payload-is-string", "token-100kb", "token-just-over-limit",
    "payload-not-utf8", "payload-latin1-signed", "payload-utf16", "padding-in-segments",
    "standard-base64-alphabet", "four-segments", "two-segments", "whitespace-inside",
    "empty-signature", "signature-of-another-token", "json-nan-exp", "json-infinity-exp", "exp-huge-integer",
    "exp-float", "exp-string", "exp-bool", "exp-negative", "exp-zero", "iat-negative", "iat-far-future",
    "nbf-far-future", "iat-zero", "exp-beyond-2-53", "exp-exponent-notation", "project-id-integer", "project-id-array",
    "project-id-unicode-digits", "ref-array", "ref-protected-bool", "runner-id-string", "runner-id-bool",
    "aud-object", "aud-empty-list", "aud-other", "iss-array", "iss-trailing-slash", "iss-other", "missing-exp",
    "missing-project-id", "expired",
]
