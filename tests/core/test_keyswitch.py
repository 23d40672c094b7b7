"""core.keys.plan when tokens.algorithm changes, driven by an injected clock: the new key type goes through the
normal lifecycle (published the lead before it signs), the old key signs until then and stays published until
its last token expired, and no token is ever signed by a key a caching verifier could lack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from gitlab_sts.core.keys import (
    KeyRing,
    ManagedKey,
    RotationPolicy,
    algorithm_switch,
    generate_key,
    parse_keyring,
    plan,
    render_keyring,
)
from tests.core.test_keyplan import POLICY, T0, check_no_token_orphaned, every

H, D = timedelta(hours=1), timedelta(days=1)
STEP = timedelta(minutes=30)
POLICIES = {alg: replace(POLICY, algorithm=alg) for alg in ("RS256", "ES256")}


def simulate(runs: list[datetime], policy_at: Callable[[datetime], RotationPolicy]) -> list[tuple[datetime, KeyRing]]:
    """The ring after each operator run, with the policy in force at that run (the key type follows it)."""
    ring, states = KeyRing(), []
    for now in runs:
        policy = policy_at(now)
        result = plan(ring, now, policy, generate_key)
        assert not plan(result.ring, now, policy, generate_key).changed  # idempotent, during a switch too
        ring = result.ring
        states.append((now, ring))
    return states


def ring_at(states: list[tuple[datetime, KeyRing]], t: datetime) -> KeyRing:
    """The ring the service holds at t: the one the last run at or before t wrote."""
    return [ring for when, ring in states if when <= t][-1]


def signers(states: list[tuple[datetime, KeyRing]], start: datetime,
            end: datetime) -> list[tuple[datetime, ManagedKey]]:
    """(time, key) for every half step from start to end: which key a token minted then is signed with."""
    out = []
    for t in every(start, end, STEP / 2):
        key = ring_at(states, t).signing_key(t)
        assert key is not None, f"no key signs at {t}"
        out.append((t, key))
    return out


@pytest.mark.parametrize(("old", "new"), [("RS256", "ES256"), ("ES256", "RS256")])
@pytest.mark.parametrize("change_after", [
    2 * H,               # right after the bootstrap: the successor of the old type is pending for a week
    3 * D,               # mid-period
    6 * D + 12 * H,      # 12 h before the old type's successor would sign (inside the lead)
    7 * D + STEP,        # just after a rotation of the old type
])
def test_switch_goes_through_the_key_lifecycle(old: str, new: str, change_after: timedelta) -> None:
    change = T0 + change_after
    states = simulate(every(T0, T0 + 30 * D, STEP), lambda t: POLICIES[new if t >= change else old])
    lead, overlap = POLICY.lead, POLICY.overlap
    assert check_no_token_orphaned(states) > 0

    before = ring_at(states, change - STEP)  # the last ring written before the change
    after = ring_at(states, change)  # the operator's first run with the new setting
    (switch_key,) = [k for k in after.keys if k.alg == new]
    # Published from the change on, signing only the lead later.
    assert switch_key.created_at == change and switch_key.activate_at == change + lead
    # Keys of the old type that were waiting are gone and never signed anything.
    dropped = [k for k in before.keys if k.activate_at > change]
    assert all(k.kid not in {x.kid for x in after.keys} for k in dropped)
    old_signer = before.signing_key(change)
    assert old_signer is not None and old_signer.alg == old
    cut = next(k for k in after.keys if k.kid == old_signer.kid)
    # The old key signs until the new one does and stays published for the longest token lifetime plus skew.
    assert cut.retire_at == switch_key.activate_at and cut.remove_at == cut.retire_at + overlap
    assert algorithm_switch(after, new, change) is not None
    assert algorithm_switch(after, new, change).successor == switch_key  # type: ignore[union-attr]

    end = switch_key.activate_at + 2 * D
    minted = signers(states, change, end)
    for t, key in minted:
        assert key.kid not in {k.kid for k in dropped}
        if t < switch_key.activate_at:
            assert key.kid == old_signer.kid, f"{key.kid} signs at {t}, before the switch"
        else:
            assert key.kid == switch_key.kid, f"{key.kid} signs at {t}, after the switch"
    # A verifier that fetched the JWKS just before the change may keep it for the lead: it knows every signer.
    cached_before = {k.kid for k in before.published(change - STEP)}
    assert {key.kid for t, key in minted if t < change + lead} <= cached_before
    # One that fetched it right after the operator published the new key knows every signer across the switch.
    cached_after = {k.kid for k in after.published(change)}
    assert {key.kid for _, key in minted} <= cached_after
    # The old key is published until its last token expired, then removed; keys created since are all new.
    for t, ring in states:
        if old_signer.created_at <= t < cut.remove_at:
            assert old_signer.kid in {k.kid for k in ring.published(t)}
        else:
            assert old_signer.kid not in {k.kid for k in ring.keys}
        if t >= change:
            assert all(k.alg == new for k in ring.keys if k.created_at >= change)
        assert len(ring.keys) <= 3
    # Afterwards rotation carries on with the new type, a week apart.
    later = [key for t, key in signers(states, end, T0 + 29 * D)]
    assert {k.alg for k in later} == {new}
    assert len({k.kid for k in later}) >= 2


def test_switch_back_before_the_new_key_signs_leaves_nothing_behind() -> None:
    """RS256 -> ES256, then back to RS256 six hours later: the EC key is dropped unused, RSA never stops."""
    first, second = T0 + 3 * D, T0 + 3 * D + 6 * H

    def policy_at(t: datetime) -> RotationPolicy:
        return POLICIES["ES256" if first <= t < second else "RS256"]

    states = simulate(every(T0, T0 + 20 * D, STEP), policy_at)
    assert check_no_token_orphaned(states) > 0
    (ec,) = [k for k in ring_at(states, first).keys if k.alg == "ES256"]
    assert all(ec.kid not in {k.kid for k in ring.keys} for t, ring in states if t >= second)
    assert {key.alg for _, key in signers(states, T0, T0 + 19 * D)} == {"RS256"}


def test_switch_plan_in_detail() -> None:
    """An RSA key signs and an RSA successor waits when tokens.algorithm becomes ES256."""
    a = generate_key("RS256", created_at=T0 - 3 * D, activate_at=T0 - 2 * D, retire_at=T0 + 5 * D,
                     remove_at=T0 + 5 * D + POLICY.overlap)
    b = generate_key("RS256", created_at=T0, activate_at=T0 + 5 * D, retire_at=T0 + 12 * D,
                     remove_at=T0 + 12 * D + POLICY.overlap)
    ring = KeyRing((a, b))
    assert algorithm_switch(ring, "RS256", T0) is None
    waiting = algorithm_switch(ring, "ES256", T0)
    assert waiting is not None and waiting.successor is None and waiting.at is None
    assert "no ES256 key exists yet" in waiting.message() and a.kid in waiting.message()

    result = plan(ring, T0, POLICIES["ES256"], generate_key)
    (c,) = [k for k in result.ring.keys if k.kid in result.added]
    assert (c.alg, c.created_at, c.activate_at, c.retire_at) == ("ES256", T0, T0 + D, T0 + D + POLICY.period)
    assert result.removed == (b.kid,)  # waiting, never signed: it would have switched back to RSA
    assert result.shortened == (a.kid,) and result.changed
    cut = next(k for k in result.ring.keys if k.kid == a.kid)
    assert (cut.retire_at, cut.remove_at) == (T0 + D, T0 + D + POLICY.overlap)
    assert any(c.kid in note and "ES256" in note for note in result.notes)
    assert not plan(result.ring, T0, POLICIES["ES256"], generate_key).changed

    switch = algorithm_switch(result.ring, "ES256", T0 + 12 * H)
    assert switch is not None and switch.successor == c and switch.at == T0 + D and switch.signing == cut
    assert f"until {(T0 + D):%Y-%m-%dT%H:%M:%SZ}" in switch.message()
    assert algorithm_switch(result.ring, "ES256", T0 + D) is None  # the EC key signs: nothing pending
    # The mixed ring survives the Secret's format.
    again = parse_keyring(render_keyring(result.ring))
    assert [(k.kid, k.alg) for k in again.keys] == [(a.kid, "RS256"), (c.kid, "ES256")]
    assert not plan(again, T0 + H, POLICIES["ES256"], generate_key).changed


def test_switch_while_nothing_signs() -> None:
    """The operator was down long enough that the RSA key retired: it signs again until the EC key may."""
    a = generate_key("RS256", created_at=T0 - 10 * D, activate_at=T0 - 9 * D, retire_at=T0 - 2 * D,
                     remove_at=T0 - 2 * D + 10 * D)
    result = plan(KeyRing((a,)), T0, POLICIES["ES256"], generate_key)
    signer = result.ring.signing_key(T0)
    assert signer is not None and signer.kid == a.kid  # AWS has this key: it may sign at once
    (c,) = [k for k in result.ring.keys if k.kid in result.added]
    assert c.alg == "ES256" and c.activate_at == T0 + POLICY.lead
    assert result.ring.signing_key(T0 + POLICY.lead).kid == c.kid  # type: ignore[union-attr]


def test_bootstrap_uses_the_configured_algorithm() -> None:
    for alg, policy in POLICIES.items():
        result = plan(KeyRing(), T0, policy, generate_key)
        assert {k.alg for k in result.ring.keys} == {alg}
        assert algorithm_switch(result.ring, alg, T0) is None
