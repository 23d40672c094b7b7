"""Minted tokens: claim shape, lifetime caps, AWS tag claims, and signatures others can verify."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import jwt as pyjwt
import pytest

from gitlab_sts.core.bindings import Grant
from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.keys import ManagedKey
from gitlab_sts.core.mint import SOURCE_IDENTITY_CLAIM, TAGS_CLAIM, build_claims, mint
from tests.core.conftest import ISSUER, ROLE, b64url

T = 1_900_000_000
SUBJECT = "system:gitlabawsbinding:team-a:deploy"


def grant(**overrides: Any) -> Grant:
    values: dict[str, Any] = {"subject": SUBJECT, "role_arn": ROLE, "audience": "sts.amazonaws.com",
                              "lifetime": 900, "tags": {}, "transitive_tags": (), "source_identity": None}
    values.update(overrides)
    return Grant(**values)


def test_claims_shape_without_tags() -> None:
    claims = build_claims(grant(), issuer=ISSUER, source_exp=T + 3000, now=T, jti="j-1", outlive_source=False)
    assert claims == {"iss": ISSUER, "sub": SUBJECT, "aud": "sts.amazonaws.com", "iat": T, "nbf": T,
                      "exp": T + 900, "jti": "j-1"}
    for name in ("iat", "nbf", "exp"):
        assert type(claims[name]) is int


def test_tags_and_source_identity() -> None:
    g = grant(tags={"project_path": "platform/payments", "ref": "main", "empty": ""},
              transitive_tags=("project_path",), source_identity="alice")
    claims = build_claims(g, issuer=ISSUER, source_exp=T + 3000, now=T, jti="j", outlive_source=False)
    assert claims[TAGS_CLAIM] == {
        "principal_tags": {"project_path": ["platform/payments"], "ref": ["main"], "empty": [""]},
        "transitive_tag_keys": ["project_path"],
    }
    assert TAGS_CLAIM == "https://aws.amazon.com/tags"
    assert claims[SOURCE_IDENTITY_CLAIM] == "alice"
    assert SOURCE_IDENTITY_CLAIM == "https://aws.amazon.com/source_identity"
    for values in claims[TAGS_CLAIM]["principal_tags"].values():
        assert isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)


def test_tags_without_transitive_keys_omit_the_member() -> None:
    claims = build_claims(grant(tags={"ref": "main"}), issuer=ISSUER, source_exp=T + 3000, now=T, jti="j",
                          outlive_source=False)
    assert claims[TAGS_CLAIM] == {"principal_tags": {"ref": ["main"]}}
    assert SOURCE_IDENTITY_CLAIM not in claims


@pytest.mark.parametrize(("lifetime", "source_exp", "outlive", "exp"), [
    (900, T + 3000, False, T + 900),
    (900, T + 300, False, T + 300),
    (900, T + 900, False, T + 900),
    (900, T + 1, False, T + 1),
    (900, T + 300, True, T + 900),
    (3600, T + 60, True, T + 3600),
    (900, T, False, None),
    (900, T - 20, False, None),
    (900, T - 20, True, T + 900),
], ids=["lifetime-shorter", "capped-by-gitlab-exp", "equal", "one-second-left", "outlive", "outlive-long",
        "gitlab-exp-now", "gitlab-expired-in-leeway", "outlive-expired-source"])
def test_exp_never_beyond_gitlab_exp_unless_outliving(lifetime: int, source_exp: int, outlive: bool,
                                                      exp: int | None) -> None:
    g = grant(lifetime=lifetime)
    if exp is None:
        with pytest.raises(InvalidRequest) as exc:
            build_claims(g, issuer=ISSUER, source_exp=source_exp, now=T, jti="j", outlive_source=outlive)
        assert exc.value.reason == "expired"
    else:
        claims = build_claims(g, issuer=ISSUER, source_exp=source_exp, now=T, jti="j", outlive_source=outlive)
        assert claims["exp"] == exp
        assert claims["exp"] <= T + lifetime


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")

    def dec(s: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        return data
    return dec(header), dec(payload)


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_minted_token_verifies_with_pyjwt(managed_keys: tuple[ManagedKey, ManagedKey], ec_managed_key: ManagedKey,
                                          which: str) -> None:
    key = managed_keys[0] if which == "rsa" else ec_managed_key
    now = datetime.now(UTC)  # PyJWT checks times against the real clock
    g = grant(tags={"project_path": "platform/payments"}, transitive_tags=("project_path",),
              source_identity="alice")
    minted = mint(g, issuer=ISSUER, source_exp=int(now.timestamp()) + 300, key=key, now=now)
    header, payload = _segments(minted.token)
    assert header == {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    assert payload == minted.claims
    public = pyjwt.PyJWK(key.public_jwk())
    decoded = pyjwt.decode(minted.token, public.key, algorithms=[key.alg], audience="sts.amazonaws.com",
                           issuer=ISSUER)
    assert decoded == minted.claims
    assert decoded["sub"] == SUBJECT
    assert decoded[TAGS_CLAIM]["principal_tags"] == {"project_path": ["platform/payments"]}
    assert minted.kid == key.kid
    assert minted.expires_in == 300
    assert minted.issued_at == int(now.timestamp())
    assert minted.expires_at == decoded["exp"]


def test_minted_token_fails_with_another_key(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    a, b = managed_keys
    now = datetime.now(UTC)
    minted = mint(grant(), issuer=ISSUER, source_exp=int(now.timestamp()) + 300, key=a, now=now)
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(minted.token, pyjwt.PyJWK(b.public_jwk()).key, algorithms=["RS256"],
                     audience="sts.amazonaws.com")
    header, payload, sig = minted.token.split(".")
    forged = f"{header}.{b64url(json.dumps({**minted.claims, 'sub': 'x'}).encode())}.{sig}"
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(forged, pyjwt.PyJWK(a.public_jwk()).key, algorithms=["RS256"], audience="sts.amazonaws.com")


def test_jti_unique(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    now = datetime(2030, 1, 2, tzinfo=UTC)
    exp = int(now.timestamp()) + 300
    jtis = {mint(grant(), issuer=ISSUER, source_exp=exp, key=managed_keys[0], now=now).jti for _ in range(20)}
    assert len(jtis) == 20


def test_mint_with_outlive(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    now = datetime(2030, 1, 2, tzinfo=UTC)
    minted = mint(grant(lifetime=3600), issuer=ISSUER, source_exp=int(now.timestamp()) + 300, key=managed_keys[0],
                  now=now, outlive_source=True)
    assert minted.expires_in == 3600


def test_mint_refuses_expired_source(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    now = datetime(2030, 1, 2, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="expires too soon"):
        mint(grant(), issuer=ISSUER, source_exp=int(now.timestamp()), key=managed_keys[0], now=now)
