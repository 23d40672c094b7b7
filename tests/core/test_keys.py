"""The signing key ring: which key signs when, what is published, and the keyset.json format."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import (
    KeyRing,
    ManagedKey,
    development_ring,
    generate_key,
    kids,
    parse_keyring,
    render_keyring,
)
from tests.core.conftest import DEEP_JSON, START

WEEK = timedelta(days=7)
PRIVATE = ("d", "p", "q", "dp", "dq", "qi")


@pytest.mark.parametrize(("offset", "expected"), [
    (-timedelta(hours=1), None),
    (timedelta(0), "a"),
    (WEEK - timedelta(seconds=1), "a"),
    (WEEK, "b"),
    (2 * WEEK - timedelta(seconds=1), "b"),
    (2 * WEEK, None),
    (10 * WEEK, None),
], ids=["before-any", "a-activates", "a-last-second", "b-takes-over", "b-last-second", "all-retired", "long-after"])
def test_signing_key_by_time(ring: KeyRing, managed_keys: tuple[ManagedKey, ManagedKey], offset: timedelta,
                             expected: str | None) -> None:
    a, b = managed_keys
    found = ring.signing_key(START + offset)
    assert (None if found is None else {a.kid: "a", b.kid: "b"}[found.kid]) == expected


def test_newest_open_window_wins(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    a, b = managed_keys
    long_a = replace(a, retire_at=START + 10 * WEEK, remove_at=START + 11 * WEEK)
    ring = KeyRing((b, long_a))
    assert ring.signing_key(START + timedelta(days=1)) == long_a  # only a is open yet
    assert ring.signing_key(START + WEEK + timedelta(days=1)) == b  # both open: the later activation signs
    assert ring.signing_key(START + 3 * WEEK) == long_a  # b retired, a still open


def test_empty_ring() -> None:
    assert KeyRing().signing_key(START) is None
    assert KeyRing().jwks(START) == {"keys": []}


@pytest.mark.parametrize(("offset", "expected"), [
    (-timedelta(days=2), []),
    (-timedelta(days=1), ["a"]),
    (WEEK - timedelta(days=1), ["a", "b"]),
    (WEEK + timedelta(hours=2) - timedelta(seconds=1), ["a", "b"]),
    (WEEK + timedelta(hours=2), ["b"]),
    (2 * WEEK + timedelta(hours=2), []),
], ids=["before-creation", "a-pre-published", "both", "a-last-second", "a-removed", "all-removed"])
def test_published_by_time(ring: KeyRing, managed_keys: tuple[ManagedKey, ManagedKey], offset: timedelta,
                           expected: list[str]) -> None:
    names = {k.kid: n for k, n in zip(managed_keys, "ab", strict=True)}
    assert [names[k.kid] for k in ring.published(START + offset)] == expected
    assert [names[k["kid"]] for k in ring.jwks(START + offset)["keys"]] == expected


def test_jwks_holds_public_members_only(managed_keys: tuple[ManagedKey, ManagedKey],
                                        ec_managed_key: ManagedKey) -> None:
    ring = KeyRing((*managed_keys, ec_managed_key))
    doc = ring.jwks(START + timedelta(days=1))
    assert len(doc["keys"]) == 2
    for entry in doc["keys"]:
        assert not set(PRIVATE) & set(entry), entry.keys()
        assert entry["use"] == "sig"
        assert isinstance(entry["kid"], str) and entry["kid"]
    rsa = next(e for e in doc["keys"] if e["kty"] == "RSA")
    ec = next(e for e in doc["keys"] if e["kty"] == "EC")
    assert set(rsa) == {"kty", "n", "e", "kid", "use", "alg"}
    assert rsa["alg"] == "RS256"
    assert set(ec) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (ec["alg"], ec["crv"]) == ("ES256", "P-256")
    # The published key verifies what the private key signs.
    a = managed_keys[0]
    token = jwt.encode({"alg": "RS256", "kid": a.kid}, {"x": 1}, a.key, algorithms=["RS256"])
    assert jwt.decode(token, RSAKey.import_key(rsa), algorithms=["RS256"]).claims == {"x": 1}


def test_generate_key_kid_is_thumbprint(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    a, b = managed_keys
    assert a.kid == a.key.thumbprint() and a.alg == "RS256" and a.key.is_private
    assert a.kid != b.kid
    assert "key=" not in repr(a) and "'d'" not in repr(a)


def test_generate_key_refuses_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        generate_key("HS256", created_at=START, activate_at=START, retire_at=START, remove_at=START)


def test_development_ring_signs_at_once(ec_managed_key: ManagedKey) -> None:
    now = START
    ring = development_ring(now, "ES256")
    key = ring.signing_key(now)
    assert key is not None and key.alg == "ES256"
    assert kids(ring.published(now)) == [key.kid]


def test_round_trip(managed_keys: tuple[ManagedKey, ManagedKey], ec_managed_key: ManagedKey) -> None:
    ring = KeyRing((managed_keys[1], ec_managed_key, managed_keys[0]))
    text = render_keyring(ring)
    parsed = parse_keyring(text)
    assert render_keyring(parsed) == text
    assert [k.kid for k in parsed.keys] == [k.kid for k in sorted(ring.keys, key=lambda k: (k.activate_at, k.kid))]
    for original in ring.keys:
        again = next(k for k in parsed.keys if k.kid == original.kid)
        assert (again.created_at, again.activate_at, again.retire_at, again.remove_at) == (
            original.created_at, original.activate_at, original.retire_at, original.remove_at)
        assert again.public_jwk() == original.public_jwk()
        assert again.key.is_private
    doc = json.loads(text)
    assert doc["keys"][0]["activateAt"].endswith("Z")


def _entry(key: ManagedKey, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(render_keyring(KeyRing((key,))))["keys"][0]
    for name, value in overrides.items():
        if name == "jwk":
            entry["jwk"] = value
        else:
            entry[name] = value
    return entry


def _keyring_error(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(ConfigError) as exc:
        parse_keyring(text, source="keyset.json")
    return str(exc.value)


def test_parse_errors_for_shape() -> None:
    assert "not valid JSON" in _keyring_error("{")
    assert "not valid JSON" in _keyring_error("[" * DEEP_JSON + "]" * DEEP_JSON)
    assert "'keys' list" in _keyring_error([])
    assert "'keys' list" in _keyring_error({"keys": {}})
    assert "expected an object with a 'jwk'" in _keyring_error({"keys": [1]})
    assert "expected an object with a 'jwk'" in _keyring_error({"keys": [{"jwk": "x"}]})


def _jwk(key: ManagedKey) -> dict[str, Any]:
    return dict(_entry(key)["jwk"])


def _corruptions(key: ManagedKey) -> list[tuple[str, dict[str, Any], str]]:
    good = _jwk(key)
    return [
        ("public-only", {k: v for k, v in good.items() if k not in PRIVATE}, "no private part"),
        ("no-kid", {k: v for k, v in good.items() if k != "kid"}, "needs a kid"),
        ("empty-kid", {**good, "kid": ""}, "needs a kid"),
        ("wrong-alg", {**good, "alg": "RS512"}, "only RSA/RS256"),
        ("no-alg", {k: v for k, v in good.items() if k != "alg"}, "only RSA/RS256"),
        ("es-alg-on-rsa", {**good, "alg": "ES256"}, "only RSA/RS256"),
        ("bad-d", {**good, "d": good["d"][:-8] + "AAAAAAAA"}, "not a valid private JWK"),
        ("d-not-base64", {**good, "d": "!!!" + good["d"]}, "not a valid private JWK"),
        ("n-number", {**good, "n": 12345}, "not a valid private JWK"),
        ("p-swapped", {**good, "p": good["q"]}, "not a valid private JWK"),
        ("missing-qi", {k: v for k, v in good.items() if k != "qi"}, ""),
    ]


def test_corrupt_key_material_never_echoed(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    key = managed_keys[0]
    good = _jwk(key)
    secrets = [str(good[m]) for m in PRIVATE] + [str(good["n"])]
    for name, jwk, words in _corruptions(key):
        try:
            parse_keyring(json.dumps({"keys": [_entry(key, jwk=jwk)]}))
        except ConfigError as exc:
            message = str(exc)
            assert words in message, (name, message)
            assert message.startswith("keyset.json: keys[0]"), (name, message)
            for secret in secrets + [str(v) for v in jwk.values()]:
                if len(secret) > 20:
                    assert secret[:20] not in message, name
        else:
            # Only a missing CRT member may be recomputed by the library; anything else must fail.
            assert name == "missing-qi", name


def test_unsupported_key_types(ec_managed_key: ManagedKey) -> None:
    oct_jwk = OctKey.generate_key(256, parameters={"kid": "s", "alg": "HS256"}).as_dict(private=True)
    message = _keyring_error({"keys": [_entry(ec_managed_key, jwk=oct_jwk)]})
    assert "only RSA/RS256 and EC P-256/ES256" in message
    assert str(oct_jwk["k"]) not in message
    p384 = {**_jwk(ec_managed_key), "crv": "P-384"}
    assert "only RSA/RS256" in _keyring_error({"keys": [_entry(ec_managed_key, jwk=p384)]})


@pytest.mark.parametrize(("overrides", "words"), [
    ({"createdAt": 1}, "createdAt must be an RFC 3339 timestamp string"),
    ({"activateAt": None}, "activateAt must be an RFC 3339 timestamp string"),
    ({"retireAt": "next tuesday"}, "retireAt is not an RFC 3339 timestamp"),
    ({"removeAt": "2030-01-20T00:00:00"}, "removeAt must carry a time zone"),
    ({"activateAt": "2029-01-01T00:00:00Z"}, "createdAt <= activateAt <= retireAt <= removeAt"),
    ({"removeAt": "2030-01-02T00:00:00Z"}, "createdAt <= activateAt <= retireAt <= removeAt"),
], ids=["created-int", "activate-null", "retire-words", "remove-naive", "activate-before-create",
        "remove-before-retire"])
def test_bad_timestamps(managed_keys: tuple[ManagedKey, ManagedKey], overrides: dict[str, Any],
                        words: str) -> None:
    message = _keyring_error({"keys": [_entry(managed_keys[0], **overrides)]})
    assert words in message
    assert message.startswith("keyset.json: keys[0]")


def test_timestamps_with_offsets_are_read_as_utc(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    entry = _entry(managed_keys[0], activateAt="2030-01-01T02:00:00+02:00")
    ring = parse_keyring(json.dumps({"keys": [entry]}))
    assert ring.keys[0].activate_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_duplicate_kid_refused(managed_keys: tuple[ManagedKey, ManagedKey]) -> None:
    a = managed_keys[0]
    message = _keyring_error({"keys": [_entry(a), _entry(a)]})
    assert "keys[1]" in message and "duplicate kid" in message
