"""verify_gitlab_token: signature, algorithm, key choice, issuer, audience, times, header members."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.core.verify import verify_gitlab_token
from tests.core.conftest import (
    AUDIENCE,
    DROP,
    GITLAB,
    NOW,
    SETTINGS_YAML,
    FakeKeySource,
    b64url,
    gitlab_claims,
    hand_token,
    json_segment,
    public_set,
)

RS256 = {"alg": "RS256", "kid": "gitlab-ci", "typ": "JWT"}


def _verify(token: str, settings: Settings, source: FakeKeySource, now: float = NOW) -> dict[str, Any]:
    return verify_gitlab_token(token, settings=settings, keys=source, now=now).claims


def _refused(token: str, settings: Settings, source: FakeKeySource, reason: str, now: float = NOW) -> str:
    with pytest.raises(InvalidRequest) as exc:
        verify_gitlab_token(token, settings=settings, keys=source, now=now)
    assert exc.value.reason == reason, exc.value.description
    assert exc.value.error == "invalid_request"
    assert token not in str(exc.value.body())
    return exc.value.description


def test_joserfc_token_accepted(settings: Settings, gitlab_key: RSAKey, second_key: RSAKey) -> None:
    claims = gitlab_claims()
    token = jwt.encode(RS256, claims, gitlab_key, algorithms=["RS256"])
    source = FakeKeySource(public_set(second_key, gitlab_key))
    verified = verify_gitlab_token(token, settings=settings, keys=source, now=NOW)
    assert verified.claims == claims
    assert verified.kid == "gitlab-ci"
    assert verified.instance.issuer == GITLAB
    assert source.refreshes == 0


def test_es256_accepted_only_when_the_instance_allows_it(ec_key: ECKey, gitlab_key: RSAKey) -> None:
    token = jwt.encode({"alg": "ES256", "kid": "ec-1"}, gitlab_claims(), ec_key, algorithms=["ES256"])
    source = FakeKeySource(public_set(gitlab_key, ec_key))
    rs_only = parse_settings(SETTINGS_YAML)
    _refused(token, rs_only, source, "bad_algorithm")
    both = parse_settings(SETTINGS_YAML.replace(f"audiences: [{AUDIENCE}]",
                                                f"audiences: [{AUDIENCE}]\n    algorithms: [RS256, ES256]"))
    assert _verify(token, both, source)["project_id"] == "42"


def test_forged_signature_with_same_kid(settings: Settings, gitlab_key: RSAKey, attacker_key: RSAKey) -> None:
    token = jwt.encode(RS256, gitlab_claims(), attacker_key, algorithms=["RS256"])
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_signature")


def test_tampered_payload_keeps_old_signature(settings: Settings, gitlab_key: RSAKey) -> None:
    good = hand_token(RS256, gitlab_claims(), gitlab_key)
    header, _, signature = good.split(".")
    evil = f"{header}.{json_segment(gitlab_claims(project_path='platform/other'))}.{signature}"
    _refused(evil, settings, FakeKeySource(public_set(gitlab_key)), "bad_signature")


def test_signature_checked_before_claims(settings: Settings, gitlab_key: RSAKey, attacker_key: RSAKey) -> None:
    # A forged token learns nothing about which audience or times would have been accepted.
    token = hand_token(RS256, gitlab_claims(aud="wrong", exp=NOW - 1000), attacker_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, "HS256", "RS512", "PS256", "ES256", "EdDSA"],
                         ids=lambda a: repr(a))
def test_disallowed_algorithms_refused(settings: Settings, gitlab_key: RSAKey, alg: str | None) -> None:
    token = hand_token({"alg": alg, "kid": "gitlab-ci"}, gitlab_claims(), None)
    description = _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_algorithm")
    assert "allowed: RS256" in description


def test_missing_alg_refused(settings: Settings, gitlab_key: RSAKey) -> None:
    token = hand_token({"kid": "gitlab-ci"}, gitlab_claims(), gitlab_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_algorithm")


def test_hs256_signed_with_the_rsa_public_key_refused(settings: Settings, gitlab_key: RSAKey) -> None:
    public = gitlab_key.public_key
    assert public is not None
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, pem.strip(), gitlab_key.as_bytes(private=False)):
        header = json_segment({"alg": "HS256", "kid": "gitlab-ci", "typ": "JWT"})
        body = json_segment(gitlab_claims())
        sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        token = f"{header}.{body}.{b64url(sig)}"
        _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_algorithm")


def test_hs256_refused_even_if_the_set_holds_a_symmetric_key(settings: Settings) -> None:
    oct_key = OctKey.import_key("a-shared-secret-of-enough-length-0123456789", {"kid": "gitlab-ci"})
    token = jwt.encode({"alg": "HS256", "kid": "gitlab-ci"}, gitlab_claims(), oct_key, algorithms=["HS256"])
    _refused(token, settings, FakeKeySource(KeySet([oct_key])), "bad_algorithm")


def test_unknown_kid_accepted_after_refresh_finds_it(settings: Settings, gitlab_key: RSAKey,
                                                     second_key: RSAKey) -> None:
    token = hand_token(RS256, gitlab_claims(), gitlab_key)
    source = FakeKeySource(public_set(second_key), refreshed=public_set(second_key, gitlab_key))
    assert _verify(token, settings, source)["project_path"] == "platform/payments"
    assert source.refreshes == 1


@pytest.mark.parametrize("refreshed", ["none", "same-old-set"])
def test_unknown_kid_refused_when_refresh_gives_nothing_new(settings: Settings, gitlab_key: RSAKey,
                                                            second_key: RSAKey, refreshed: str) -> None:
    token = hand_token(RS256, gitlab_claims(), gitlab_key)
    source = FakeKeySource(public_set(second_key), None if refreshed == "none" else public_set(second_key))
    description = _refused(token, settings, source, "unknown_kid")
    assert "does not publish" in description
    assert source.refreshes == 1


def test_missing_kid_with_one_key_accepted(settings: Settings, gitlab_key: RSAKey, ec_key: ECKey) -> None:
    token = hand_token({"alg": "RS256"}, gitlab_claims(), gitlab_key)
    # The EC key is not a candidate for RS256, so the choice is still unambiguous.
    source = FakeKeySource(public_set(gitlab_key, ec_key))
    verified = verify_gitlab_token(token, settings=settings, keys=source, now=NOW)
    assert verified.kid is None


def test_missing_kid_with_several_keys_refused(settings: Settings, gitlab_key: RSAKey, second_key: RSAKey) -> None:
    token = hand_token({"alg": "RS256"}, gitlab_claims(), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key, second_key), refreshed=public_set(gitlab_key))
    _refused(token, settings, source, "missing_kid")
    assert source.refreshes == 0  # a kid-less token never triggers a refetch


def test_kid_naming_a_key_of_another_type_refused(settings: Settings, gitlab_key: RSAKey, ec_key: ECKey) -> None:
    token = hand_token({"alg": "RS256", "kid": "ec-1"}, gitlab_claims(), gitlab_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key, ec_key)), "unknown_kid")


def test_encryption_key_is_not_used_for_signatures(settings: Settings, gitlab_key: RSAKey) -> None:
    data = gitlab_key.as_dict(private=False)
    data["use"] = "enc"
    token = hand_token(RS256, gitlab_claims(), gitlab_key)
    _refused(token, settings, FakeKeySource(KeySet.import_key_set({"keys": [data]})), "unknown_kid")


@pytest.mark.parametrize("kid", [1, ["gitlab-ci"], {"k": 1}], ids=["int", "list", "object"])
def test_non_string_kid_refused(settings: Settings, gitlab_key: RSAKey, kid: Any) -> None:
    token = hand_token({"alg": "RS256", "kid": kid}, gitlab_claims(), gitlab_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_header")


@pytest.mark.parametrize(("member", "value"), [
    ("jku", "https://evil.example.com/jwks"),
    ("x5u", "https://evil.example.com/cert.pem"),
    ("jwk", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
    ("x5c", ["MIIB"]),
    ("crit", ["exp"]),
    ("b64", False),
    ("zip", "DEF"),
    ("enc", "A256GCM"),
])
def test_forbidden_header_members_refused(settings: Settings, gitlab_key: RSAKey, member: str, value: Any) -> None:
    token = hand_token({**RS256, member: value}, gitlab_claims(), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    description = _refused(token, settings, source, "bad_header")
    assert member in description
    assert source.fetches == 0  # refused before any key is even looked at


@pytest.mark.parametrize(("typ", "ok"), [
    (DROP, True), ("JWT", True), ("jwt", True), ("at+jwt", False), ("JOSE", False), (1, False), (None, False),
], ids=["absent", "JWT", "lowercase", "at+jwt", "JOSE", "int", "null"])
def test_typ_header(settings: Settings, gitlab_key: RSAKey, typ: Any, ok: bool) -> None:
    header: dict[str, Any] = {"alg": "RS256", "kid": "gitlab-ci"}
    if typ is not DROP:
        header["typ"] = typ
    token = hand_token(header, gitlab_claims(), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    if ok:
        assert _verify(token, settings, source)["ref"] == "main"
    else:
        _refused(token, settings, source, "bad_header")


@pytest.mark.parametrize("iss", ["https://evil.example.com", "https://gitlab.example.com/", "gitlab.example.com",
                                 "https://GITLAB.example.com", DROP, ["https://gitlab.example.com"], None, 1],
                         ids=["other", "trailing-slash", "bare-host", "case", "missing", "list", "null", "int"])
def test_untrusted_issuer_refused_offline(settings: Settings, gitlab_key: RSAKey, iss: Any) -> None:
    token = hand_token(RS256, gitlab_claims(iss=iss), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    _refused(token, settings, source, "untrusted_issuer")
    assert source.fetches == 0 and source.refreshes == 0


@pytest.mark.parametrize(("aud", "ok"), [
    (AUDIENCE, True),
    ([AUDIENCE], True),
    (["https://other.example.com", AUDIENCE], True),
    ("https://other.example.com", False),
    (AUDIENCE + "/", False),
    (["https://other.example.com"], False),
    ([], False),
    ("", False),
    (None, False),
    ([AUDIENCE, 1], False),
    (1, False),
    ({"aud": AUDIENCE}, False),
], ids=["string", "list-of-one", "list-with-ours", "other-string", "trailing-slash", "other-list", "empty-list",
        "empty-string", "null", "list-with-int", "int", "object"])
def test_audience(settings: Settings, gitlab_key: RSAKey, aud: Any, ok: bool) -> None:
    token = hand_token(RS256, gitlab_claims(aud=aud), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    if ok:
        assert _verify(token, settings, source)["aud"] == aud
    else:
        _refused(token, settings, source, "bad_audience")


def test_missing_audience_refused(settings: Settings, gitlab_key: RSAKey) -> None:
    token = hand_token(RS256, gitlab_claims(aud=DROP), gitlab_key)
    with pytest.raises(InvalidRequest) as exc:
        verify_gitlab_token(token, settings=settings, keys=FakeKeySource(public_set(gitlab_key)), now=NOW)
    assert exc.value.reason in ("bad_audience", "missing_claim")


LEEWAY = 30


@pytest.mark.parametrize(("claims", "now", "reason"), [
    ({"exp": NOW}, NOW + LEEWAY - 1, None),
    ({"exp": NOW}, NOW + LEEWAY, "expired"),
    ({"exp": NOW}, NOW + 3600, "expired"),
    ({"nbf": NOW + LEEWAY, "iat": NOW}, NOW, None),
    ({"nbf": NOW + LEEWAY + 1, "iat": NOW}, NOW, "not_yet_valid"),
    ({"iat": NOW + LEEWAY, "nbf": NOW}, NOW, None),
    ({"iat": NOW + LEEWAY + 1, "nbf": NOW}, NOW, "not_yet_valid"),
    ({"iat": NOW + 3600, "nbf": NOW + 3595, "exp": NOW + 3900}, NOW, "not_yet_valid"),
    ({"nbf": DROP}, NOW, None),
    ({"exp": float(NOW + 300)}, NOW, "claim_type"),
    ({"exp": str(NOW + 300)}, NOW, "claim_type"),
    ({"iat": float(NOW)}, NOW, "claim_type"),
    ({"nbf": str(NOW)}, NOW, "claim_type"),
    ({"exp": True}, NOW, "claim_type"),
    ({"exp": DROP}, NOW, "missing_claim"),
    ({"iat": DROP}, NOW, "missing_claim"),
], ids=["exp-inside-leeway", "exp-at-leeway-edge", "long-expired", "nbf-at-leeway-edge", "nbf-past-leeway",
        "iat-at-leeway-edge", "iat-past-leeway", "issued-an-hour-ahead", "no-nbf", "exp-float", "exp-string",
        "iat-float", "nbf-string", "exp-bool", "exp-missing", "iat-missing"])
def test_times(settings: Settings, gitlab_key: RSAKey, claims: dict[str, Any], now: int,
               reason: str | None) -> None:
    token = hand_token(RS256, gitlab_claims(**claims), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    if reason is None:
        assert _verify(token, settings, source, now=now)["ref"] == "main"
    else:
        _refused(token, settings, source, reason, now=now)


@pytest.mark.parametrize(("claims", "reason"), [
    ({"project_id": 42}, "claim_type"),
    ({"ref_protected": True}, "claim_type"),
    ({"runner_id": "12"}, "claim_type"),
    ({"project_path": DROP}, "missing_claim"),
    ({"ref_type": DROP}, "missing_claim"),
], ids=["project-id-int", "ref-protected-bool", "runner-id-string", "no-project-path", "no-ref-type"])
def test_claim_types_checked_after_signature(settings: Settings, gitlab_key: RSAKey, claims: dict[str, Any],
                                             reason: str) -> None:
    token = hand_token(RS256, gitlab_claims(**claims), gitlab_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), reason)


def test_oversized_token_refused_before_parsing(gitlab_key: RSAKey) -> None:
    small = parse_settings(SETTINGS_YAML.replace("leeway: 30}", "leeway: 30, maxTokenBytes: 1024}"))
    token = hand_token(RS256, gitlab_claims(padding="x" * 1200), gitlab_key)
    source = FakeKeySource(public_set(gitlab_key))
    _refused(token, small, source, "token_too_large")
    assert source.fetches == 0


@pytest.mark.parametrize("token", [
    "not-a-jwt",
    "a.b.c",
    json_segment({"alg": "RS256"}) + ".!!!." + b64url(b"s"),
    json_segment({"alg": "RS256"}) + "." + b64url(b"\xc3\x28") + "." + b64url(b"s"),
    json_segment({"alg": "RS256"}) + "." + b64url(b'{"iss": "a", "iss": "https://gitlab.example.com"}') + ".",
], ids=["no-dots", "bad-base64-json", "bad-alphabet", "non-utf8", "duplicate-iss"])
def test_malformed_tokens(settings: Settings, gitlab_key: RSAKey, token: str) -> None:
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "malformed_token")


def test_duplicate_claim_in_signed_token_refused(settings: Settings, gitlab_key: RSAKey) -> None:
    header = json_segment(RS256)
    body = b64url(b'{"iss": "https://gitlab.example.com", "project_path": "a/b", "project_path": "c/d"}')
    token = hand_token(header, body, gitlab_key)
    description = _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "malformed_token")
    assert "duplicate member 'project_path'" in description


def test_null_kid_is_malformed_not_missing(settings: Settings, gitlab_key: RSAKey) -> None:
    token = hand_token({"alg": "RS256", "kid": None}, gitlab_claims(), gitlab_key)
    _refused(token, settings, FakeKeySource(public_set(gitlab_key)), "bad_header")


def test_key_declaring_another_alg_is_not_used(settings: Settings, gitlab_key: RSAKey) -> None:
    data = gitlab_key.as_dict(private=False)
    data["alg"] = "RS512"
    token = hand_token(RS256, gitlab_claims(), gitlab_key)
    with pytest.raises(InvalidRequest) as exc:
        verify_gitlab_token(token, settings=settings, now=NOW,
                            keys=FakeKeySource(KeySet.import_key_set({"keys": [data]})))
    assert exc.value.reason in ("bad_signature", "unknown_kid")
