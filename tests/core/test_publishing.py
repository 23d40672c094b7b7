"""core.publishing: documents, JWKS coverage, and the activation gate (table tests and a simulation, injected clock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import KeyRing, ManagedKey, Plan, RotationPolicy, generate_key, plan
from gitlab_sts.core.publishing import (
    DISCOVERY,
    JWKS,
    RETRY_SLACK,
    coverage,
    delayed_keys,
    discovery_document,
    documents,
    gate,
    track_published,
)
from gitlab_sts.core.settings import parse_settings

T0 = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = RotationPolicy(algorithm="ES256", period=timedelta(days=7), lead=timedelta(hours=24),
                        overlap=timedelta(hours=1, minutes=5))
H, D = timedelta(hours=1), timedelta(days=1)


def es256(alg: str, **kw: Any) -> ManagedKey:
    return generate_key("ES256", **kw)


def key(created: datetime, activate: datetime, retire: datetime, remove: datetime) -> ManagedKey:
    return generate_key("ES256", created_at=created, activate_at=activate, retire_at=retire, remove_at=remove)


def steady_ring() -> tuple[KeyRing, ManagedKey, ManagedKey]:
    """A signs now (since T0 - 2d); B was created at T0 and activates at T0 + 6d."""
    a = key(T0 - 3 * D, T0 - 2 * D, T0 + 6 * D, T0 + 6 * D + POLICY.overlap)
    b = key(T0, T0 + 6 * D, T0 + 13 * D, T0 + 13 * D + POLICY.overlap)
    return KeyRing((a, b)), a, b


# -- documents -------------------------------------------------------------------------------------------


def test_documents_hold_public_keys_only_and_point_at_the_issuer() -> None:
    ring, a, b = steady_ring()
    docs = documents("https://bucket.s3.eu-west-1.amazonaws.com/sts", ring, T0)
    jwks = json.loads(docs[JWKS])
    assert [k["kid"] for k in jwks["keys"]] == [a.kid, b.kid]
    assert not any(m in k for k in jwks["keys"] for m in ("d", "p", "q"))
    disc = json.loads(docs[DISCOVERY])
    assert disc["issuer"] == "https://bucket.s3.eu-west-1.amazonaws.com/sts"
    assert disc["jwks_uri"] == "https://bucket.s3.eu-west-1.amazonaws.com/sts/.well-known/jwks.json"
    assert disc["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    # Deterministic: an unchanged key set renders to the same bytes (no needless upload).
    assert documents("https://x.example", ring, T0)[JWKS] == docs[JWKS]


def test_discovery_document_matches_what_the_service_promises() -> None:
    doc = discovery_document("https://sts.example.com", ["RS256"])
    assert set(doc) == {"issuer", "jwks_uri", "response_types_supported", "subject_types_supported",
                        "id_token_signing_alg_values_supported", "claims_supported"}
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    # RS256 is listed even with EC keys only (OpenID Connect Discovery 1.0 section 3 requires it).
    assert discovery_document("https://sts.example.com", [])["id_token_signing_alg_values_supported"] == ["RS256"]


def test_discovery_lists_the_algorithm_of_every_published_key() -> None:
    """Across a switch from ES256 to RS256 the list follows the published keys, not the settings."""
    ec = key(T0 - 3 * D, T0 - 2 * D, T0 + D, T0 + D + POLICY.overlap)
    rsa = generate_key("RS256", created_at=T0, activate_at=T0 + D, retire_at=T0 + 8 * D,
                       remove_at=T0 + 8 * D + POLICY.overlap)
    ring = KeyRing((ec, rsa))

    def listed(at: datetime) -> list[str]:
        doc = json.loads(documents("https://sts.example.com", ring, at)[DISCOVERY])
        algs: list[str] = doc["id_token_signing_alg_values_supported"]
        return algs

    assert ring.algorithms(T0 - H) == ["ES256"] and listed(T0 - H) == ["ES256", "RS256"]
    assert ring.algorithms(T0) == ["ES256", "RS256"] and listed(T0) == ["ES256", "RS256"]
    gone = T0 + D + POLICY.overlap  # the EC key is removed: nothing it signed is still valid
    assert ring.algorithms(gone) == ["RS256"] and listed(gone) == ["RS256"]


# -- coverage --------------------------------------------------------------------------------------------


def test_coverage_reports_missing_extra_and_private_members() -> None:
    ring, a, b = steady_ring()
    full = ring.jwks(T0)
    assert coverage(full, ring, T0).matches
    only_a = {"keys": [a.public_jwk()]}
    cov = coverage(only_a, ring, T0)
    assert not cov.matches and cov.missing == (b.kid,) and cov.signing_published
    only_b = {"keys": [b.public_jwk(), {"kid": "stranger", "kty": "EC"}]}
    cov = coverage(only_b, ring, T0)
    assert cov.missing == (a.kid,) and not cov.signing_published and cov.extra == ("stranger",)
    leaky = {"keys": [{**a.public_jwk(), "d": "secret"}, b.public_jwk()]}
    assert coverage(leaky, ring, T0).private_members and not coverage(leaky, ring, T0).matches
    assert coverage(None, ring, T0).missing == (a.kid, b.kid)
    assert coverage({"keys": "nope"}, ring, T0).published == ()


def test_track_published_keeps_first_sighting_and_forgets_dropped_kids() -> None:
    since = track_published({}, ("a", "b"), T0)
    since = track_published(since, ("a", "b", "c"), T0 + H)
    assert since == {"a": T0, "b": T0, "c": T0 + H}
    since = track_published(since, ("a", "c"), T0 + 2 * H)
    assert since == {"a": T0, "c": T0 + H}
    assert track_published(since, ("a", "b", "c"), T0 + 3 * H)["b"] == T0 + 3 * H  # lead time starts again


# -- the gate: table tests -------------------------------------------------------------------------------


def test_published_successor_keeps_its_activation() -> None:
    ring, a, b = steady_ring()
    proposed = plan(ring, T0, POLICY, es256)
    out = gate(ring, proposed, T0, POLICY, {a.kid: T0 - 3 * D, b.kid: T0})
    assert out is proposed  # nothing to hold back


def test_unpublished_successor_far_from_activation_is_left_alone() -> None:
    # B activates in 6 days; even unpublished it cannot sign before now + lead: no write needed yet.
    ring, a, b = steady_ring()
    proposed = plan(ring, T0, POLICY, es256)
    assert gate(ring, proposed, T0, POLICY, {a.kid: T0}).ring == proposed.ring


@pytest.mark.parametrize(("published_at", "expected_activation"), [
    (None, "now + lead + slack"),                        # never published: pushed past the lead, plus slack
    (T0 + 5 * D + 12 * H, "published + lead"),          # published 12 h before its activation: too recent
])
def test_successor_not_published_for_the_lead_is_held_back(published_at: datetime | None,
                                                           expected_activation: str) -> None:
    ring, a, b = steady_ring()
    now = T0 + 5 * D + 12 * H  # B is due in 12 h
    since = {a.kid: T0 - 3 * D} | ({b.kid: published_at} if published_at else {})
    proposed = plan(ring, now, POLICY, es256)
    out = gate(ring, proposed, now, POLICY, since)
    new_b = next(k for k in out.ring.keys if k.kid == b.kid)
    new_a = next(k for k in out.ring.keys if k.kid == a.kid)
    want = now + POLICY.lead + RETRY_SLACK if published_at is None else published_at + POLICY.lead
    assert new_b.activate_at == want, expected_activation
    assert new_b.retire_at - new_b.activate_at == b.retire_at - b.activate_at  # the window moves whole
    # The current key signs until the successor does: never a gap, never an unpublished signer.
    assert new_a.retire_at == new_b.activate_at and new_a.remove_at >= new_b.activate_at + POLICY.overlap
    assert out.changed and b.kid in out.extended and a.kid in out.extended
    assert any(b.kid in n for n in out.notes)
    for t in (now, now + 12 * H, want - timedelta(seconds=1)):
        assert out.ring.signing_key(t).kid == a.kid  # type: ignore[union-attr]
    assert out.ring.signing_key(want).kid == b.kid  # type: ignore[union-attr]
    # Idempotent: the gated ring passes the gate unchanged.
    again = gate(out.ring, plan(out.ring, now, POLICY, es256), now, POLICY, since)
    assert not again.changed


def test_activated_keys_are_never_moved() -> None:
    ring, a, b = steady_ring()
    later = T0 + 6 * D + H  # B signs already; the plan adds C ahead
    proposed = plan(ring, later, POLICY, es256)
    out = gate(ring, proposed, later, POLICY, {})  # nothing is published at all (e.g. S3 turned on just now)
    assert next(k for k in out.ring.keys if k.kid == b.kid) == next(k for k in ring.keys if k.kid == b.kid)
    assert out.ring.signing_key(later).kid == b.kid  # type: ignore[union-attr]
    (c,) = [k for k in out.ring.keys if k.kid in proposed.added]
    assert c.activate_at >= later + POLICY.lead + RETRY_SLACK


def test_bootstrap_signs_once_published_and_waits_while_not() -> None:
    published = plan(KeyRing(), T0, POLICY, es256)
    kids = {k.kid: T0 for k in published.ring.keys}
    ok = gate(KeyRing(), published, T0, POLICY, kids)
    assert ok is published and ok.ring.signing_key(T0) is not None  # a new issuer has nothing cached anywhere
    blocked = gate(KeyRing(), published, T0, POLICY, {})
    assert blocked.ring.signing_key(T0) is None  # the operator then writes nothing (see operator.publish)


def test_emergency_activation_needs_publication() -> None:
    # The operator was down: A retired and B (published) is pending; plan activates B at once.
    a = key(T0 - 20 * D, T0 - 19 * D, T0 - 12 * D, T0 - 12 * D + H)
    b = key(T0 - 2 * H, T0 + 5 * H, T0 + 7 * D, T0 + 7 * D + H)
    ring = KeyRing((a, b))
    proposed = plan(ring, T0, POLICY, es256)
    assert proposed.ring.signing_key(T0).kid == b.kid  # type: ignore[union-attr]
    assert gate(ring, proposed, T0, POLICY, {b.kid: T0 - 2 * H}).ring.signing_key(T0).kid == b.kid  # type: ignore[union-attr]
    assert gate(ring, proposed, T0, POLICY, {}).ring.signing_key(T0) is None


def test_delayed_keys_lists_keys_waiting_for_publication() -> None:
    ring, a, b = steady_ring()
    assert delayed_keys(ring, T0, {a.kid: T0, b.kid: T0}, POLICY) == []
    assert delayed_keys(ring, T0, {a.kid: T0}, POLICY) == [b.kid]
    assert delayed_keys(ring, T0, {b.kid: T0 + 5 * D + H}, POLICY) == [b.kid]


# -- the gate: simulation --------------------------------------------------------------------------------


@pytest.mark.parametrize("outages", [
    [],
    [(T0 + 6 * D, T0 + 9 * D)],                               # across the first successor's creation
    [(T0 + 12 * D, T0 + 15 * D), (T0 + 20 * D, T0 + 20 * D + 6 * H)],
    [(T0 + 13 * D + 20 * H, T0 + 16 * D)],                     # starts just before an activation
    [(T0 + 7 * D - H, T0 + 13 * D + 12 * H)],                  # C (created at 7 d) published only 12 h before 14 d
    [(T0 + 6 * D, T0 + 17 * D)],                               # C unpublished past its planned activation
    [(T0 + 7 * D - H, T0 + 9 * D), (T0 + 13 * D, T0 + 14 * D + 2 * H), (T0 + 21 * D, T0 + 30 * D)],
])
def test_no_key_ever_signs_before_its_jwks_was_published_for_the_lead(
        outages: list[tuple[datetime, datetime]]) -> None:
    simulate_s3(outages, lambda t: POLICY, es256)


@pytest.mark.parametrize(("old", "new"), [("ES256", "RS256"), ("RS256", "ES256")])
@pytest.mark.parametrize("outages", [
    [],
    [(T0 + 3 * D + 2 * H, T0 + 5 * D)],                       # S3 down from just after the change
    [(T0 + 3 * D - 2 * H, T0 + 3 * D + 12 * H)],              # down across the change: the new key waits
])
def test_algorithm_switch_waits_for_publication_too(old: str, new: str,
                                                   outages: list[tuple[datetime, datetime]]) -> None:
    change = T0 + 3 * D
    policies = {alg: RotationPolicy(algorithm=alg, period=POLICY.period, lead=POLICY.lead, overlap=POLICY.overlap)
                for alg in (old, new)}
    signed = simulate_s3(outages, lambda t: policies[new if t >= change else old], generate_key)
    assert {alg for t, alg in signed if t < change + POLICY.lead} == {old}
    assert {alg for t, alg in signed if t >= change + 3 * D} == {new}


def simulate_s3(outages: list[tuple[datetime, datetime]], policy_at: Any, new_key: Any) -> list[tuple[datetime, str]]:
    """Run plan + gate every 30 minutes for 40 days with S3 down during the outages; returns (time, signing alg)."""
    step = timedelta(minutes=30)
    ring = KeyRing()
    since: dict[str, datetime] = {}
    bucket: tuple[str, ...] = ()  # kids in the JWKS that S3 holds
    first_signer: str | None = None
    signed = []
    t = T0
    while t < T0 + 40 * D:
        up = not any(start <= t < end for start, end in outages)
        policy = policy_at(t)
        proposed = plan(ring, t, policy, new_key)
        if up:
            bucket = tuple(k.kid for k in proposed.ring.published(t))
            since = track_published(since, bucket, t)
        out = gate(ring, proposed, t, policy, since)
        if out.ring.signing_key(t) is None and proposed.ring.signing_key(t) is not None:
            out = Plan(ring)  # the operator writes nothing
        ring = out.ring
        for probe in (t, t + step / 2):
            signer = ring.signing_key(probe)
            if signer is None:
                assert first_signer is None, f"a gap with no signing key at {probe}"
                continue
            signed.append((probe, signer.alg))
            first_signer = first_signer or signer.kid
            assert signer.kid in bucket, f"{signer.kid} signs at {probe} but S3 does not publish it"
            if signer.kid != first_signer:
                assert since[signer.kid] + policy.lead <= probe, f"{signer.kid} published too recently at {probe}"
        t += step
    assert first_signer is not None
    assert len({k.kid for k in ring.keys}) >= 2
    return signed


# -- settings --------------------------------------------------------------------------------------------

BASE = """
gitlab: [{issuer: https://gitlab.example.com, audiences: [x]}]
"""


@pytest.mark.parametrize(("text", "url"), [
    ("issuer: https://oidc.s3.eu-west-1.amazonaws.com/sts\npublish: {s3: {bucket: oidc, region: eu-west-1, "
     "prefix: sts}}", "https://oidc.s3.eu-west-1.amazonaws.com/sts"),
    ("issuer: https://oidc.s3.us-east-1.amazonaws.com\npublish: {ingress: false, s3: {bucket: oidc, "
     "region: us-east-1}}", "https://oidc.s3.us-east-1.amazonaws.com"),
    ("issuer: https://sts.example.com\npublish: {s3: {bucket: my.oidc, region: eu-west-1, "
     "publicUrl: https://sts.example.com}}", "https://sts.example.com"),
    ("issuer: http://127.0.0.1:9000/oidc/p\npublish: {s3: {bucket: oidc, region: us-east-1, prefix: p, "
     "endpointUrl: 'http://127.0.0.1:9000'}}", "http://127.0.0.1:9000/oidc/p"),
])
def test_s3_settings_issuer_equals_the_public_url(text: str, url: str) -> None:
    s = parse_settings(text + BASE)
    assert s.publish.s3 is not None and s.publish.s3.url == url == s.issuer


@pytest.mark.parametrize(("text", "error"), [
    ("issuer: https://sts.example.com\npublish: {s3: {bucket: oidc, region: eu-west-1}}",
     "issuer must equal the S3 publication URL https://oidc.s3.eu-west-1.amazonaws.com"),
    ("issuer: https://x.example\npublish: {s3: {bucket: my.oidc, region: eu-west-1}}", "needs publicUrl"),
    ("issuer: https://x.example\npublish: {s3: {bucket: oidc, region: eu-west-1, prefix: /a}}", "prefix"),
    ("issuer: https://x.example\npublish: {s3: {bucket: Oidc_Bucket, region: eu-west-1}}", "bucket"),
    ("issuer: https://x.example\npublish: {ingress: false}", "publish needs ingress: true or an s3 target"),
    ("issuer: https://x.example\npublish: {s3: {bucket: oidc, region: eu-west-1, publicUrl: 'http://x.example'}}",
     "https"),
])
def test_s3_settings_refused(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_settings(text + BASE)


def test_publish_defaults_to_ingress() -> None:
    s = parse_settings("issuer: https://sts.example.com" + BASE)
    assert s.publish.via == ("ingress",) and s.publish.s3 is None
