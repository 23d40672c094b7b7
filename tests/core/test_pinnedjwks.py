"""core.pinnedjwks: the refreshed-copy document, its checks, and which copy the service uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.pinnedjwks import (
    PinnedCopy,
    apply_copies,
    check_public_jwks,
    file_name,
    newer_copy,
    parse_copy,
    parse_jwks_bytes,
    pinned_ages,
    render_copy,
)
from gitlab_sts.core.settings import parse_settings

PINNED_AT = datetime(2030, 1, 1, tzinfo=UTC)


def jwks(kid: str) -> dict[str, Any]:
    return {"keys": [{**ECKey.generate_key("P-256").as_dict(private=False), "kid": kid}]}


def settings(source: str | None = "https://keys.internal/a.json",
             pinned_at: str | None = "2030-01-01T00:00:00Z") -> Any:
    extra = f"    pinnedJwksSource: {source}\n" if source else ""
    extra += f'    pinnedAt: "{pinned_at}"\n' if pinned_at else ""
    return parse_settings(f"""
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
  - issuer: https://gitlab.airgap.example
    audiences: [https://sts.example.com]
    jwks: {{"keys": [{{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "settings"}}]}}
{extra}""")


def test_render_parse_round_trip_and_stable_name() -> None:
    copy = PinnedCopy("https://gitlab.airgap.example", PINNED_AT, jwks("a"))
    assert parse_copy(render_copy(copy)) == copy
    assert render_copy(copy) == render_copy(copy)
    name = file_name(copy.issuer)
    assert name == file_name("https://gitlab.airgap.example") != file_name("https://gitlab.example.com")
    assert name.startswith("jwks-") and name.endswith(".json") and len(name) == 42


@pytest.mark.parametrize(("document", "needle"), [
    ([], "not a JSON object"),
    ({}, "no keys"),
    ({"keys": []}, "no keys"),
    ({"keys": ["x"]}, "keys[0] is not a JSON object"),
    ({"keys": [{"kty": "OKP", "x": "AA"}]}, "kty must be RSA or EC"),
    ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]}, "private key members (d)"),
    ({"keys": [{"kty": "EC", "crv": "P-256", "x": "!!", "y": "!!"}]}, "cannot be imported"),
])
def test_bad_key_sets_are_refused(document: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_public_jwks(document)
    assert needle in str(err.value)
    assert "AQAB" not in str(err.value)  # never echoes key material


def test_size_and_json_limits() -> None:
    good = jwks("a")
    assert parse_jwks_bytes(json.dumps(good).encode()) == good
    with pytest.raises(ConfigError, match="larger than"):
        parse_jwks_bytes(b" " * (256 * 1024 + 1))
    with pytest.raises(ConfigError, match="not JSON"):
        parse_jwks_bytes(b"<html>")


@pytest.mark.parametrize(("fetched_at", "needle"), [
    (None, "fetchedAt is not an ISO 8601 time"),
    ("yesterday", "fetchedAt is not an ISO 8601 time"),
    ("2030-01-01T00:00:00", "fetchedAt must carry a time zone"),
])
def test_fetched_at_must_be_a_zoned_time(fetched_at: Any, needle: str) -> None:
    text = json.dumps({"issuer": "https://gitlab.airgap.example", "fetchedAt": fetched_at, "jwks": jwks("a")})
    with pytest.raises(ConfigError, match=f"^copy: {needle}$"):
        parse_copy(text, "copy")


def test_fetched_at_is_kept_in_utc() -> None:
    text = json.dumps({"issuer": "https://gitlab.airgap.example", "fetchedAt": "2030-01-01T02:00:00+02:00",
                       "jwks": jwks("a")})
    assert parse_copy(text).fetched_at == PINNED_AT and parse_copy(text).fetched_at.tzinfo == UTC


def test_newer_copy_rules() -> None:
    s = settings()
    inst = s.gitlab[1]
    copy = PinnedCopy(inst.issuer, PINNED_AT + timedelta(seconds=1), jwks("fresh"))
    assert newer_copy(inst, {inst.issuer: copy}) is copy
    older = PinnedCopy(inst.issuer, PINNED_AT, jwks("old"))
    assert newer_copy(inst, {inst.issuer: older}) is None  # settings' copy is as new: it wins
    assert newer_copy(settings(source=None).gitlab[1], {inst.issuer: copy}) is None  # no source, no copy used
    assert newer_copy(s.gitlab[0], {inst.issuer: copy}) is None
    no_date = settings(pinned_at=None).gitlab[1]
    assert newer_copy(no_date, {inst.issuer: older}) is older  # without pinnedAt any copy is newer


def test_apply_copies_replaces_only_the_pinned_instance() -> None:
    s = settings()
    copy = PinnedCopy("https://gitlab.airgap.example", PINNED_AT + timedelta(days=3), jwks("fresh"))
    effective, used = apply_copies(s, {copy.issuer: copy})
    assert used == {copy.issuer}
    assert effective.gitlab[0] is s.gitlab[0]
    assert effective.gitlab[1].jwks == copy.jwks and effective.gitlab[1].pinned_at == copy.fetched_at
    assert effective.gitlab[1].pinned_jwks_source == s.gitlab[1].pinned_jwks_source
    assert s.gitlab[1].jwks is not None and s.gitlab[1].jwks["keys"][0]["kid"] == "settings"  # unchanged
    assert apply_copies(s, {}) == (s, frozenset())


AIRGAP = "https://gitlab.airgap.example"
LIMIT = timedelta(days=90)  # pinnedMaxAgeDays' default


@pytest.mark.parametrize(("since", "warns"), [
    (timedelta(0), False), (LIMIT - timedelta(seconds=1), False), (LIMIT, True), (LIMIT * 3, True),
], ids=["fresh", "a-second-before-the-limit", "at-the-limit", "long-past"])
def test_pinned_age_warns_from_pinned_max_age_days(since: timedelta, warns: bool) -> None:
    (pinned,) = pinned_ages(settings(), PINNED_AT + since)
    assert (pinned.issuer, pinned.age) == (AIRGAP, since)
    assert (pinned.warning is not None) is warns


@pytest.mark.parametrize(("source", "from_operator", "words"), [
    (None, frozenset(), "copy the key set again and update pinnedAt"),
    ("https://keys.internal/a.json", frozenset(), "has not fetched a newer copy from https://keys.internal/a.json"),
    ("https://keys.internal/a.json", frozenset({AIRGAP}), "last fetched by the operator"),
], ids=["hand-copied", "operator-never-fetched", "operator-refresh-failing"])
def test_pinned_age_warning_says_what_to_do(source: str | None, from_operator: frozenset[str], words: str) -> None:
    (pinned,) = pinned_ages(settings(source=source), PINNED_AT + timedelta(days=200), from_operator)
    assert pinned.warning is not None
    assert words in pinned.warning and "200 days ago" in pinned.warning and "pinnedMaxAgeDays=90" in pinned.warning


def test_pinned_age_needs_pinned_at() -> None:
    assert pinned_ages(settings(source=None, pinned_at=None), PINNED_AT + LIMIT * 5) == []
