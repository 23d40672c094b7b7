"""core.keys.plan driven by an injected clock: rotation over many periods, downtime, skew, corruption."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import (
    KeyRing,
    ManagedKey,
    RotationPolicy,
    generate_key,
    parse_keyring,
    plan,
    policy_from_settings,
    render_keyring,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = policy_from_settings("ES256", period_s=7 * 86400, lead_s=86400, max_lifetime_s=3600, skew_s=300)
H = timedelta(hours=1)
D = timedelta(days=1)


def fast_key(alg: str, **windows: Any) -> ManagedKey:
    return generate_key("ES256", **windows)  # P-256 keys generate in a millisecond


def every(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += step
    return out


def simulate(run_times: Iterable[datetime], policy: RotationPolicy = POLICY) -> list[tuple[datetime, KeyRing]]:
    """The ring after each operator run, as (time of the run, ring)."""
    ring, states = KeyRing(), []
    for now in run_times:
        result = plan(ring, now, policy, fast_key)
        # Idempotent: planning again at the same instant changes nothing.
        assert not plan(result.ring, now, policy, fast_key).changed
        ring = result.ring
        states.append((now, ring))
    return states


def check_no_token_orphaned(states: list[tuple[datetime, KeyRing]], policy: RotationPolicy = POLICY) -> int:
    """Every token the service could sign stays verifiable (key published) until it expires plus skew."""
    signed = 0
    for i, (start, ring) in enumerate(states):
        end = states[i + 1][0] if i + 1 < len(states) else start + H
        for s in (start, start + (end - start) / 2, end - timedelta(seconds=1)):
            key = ring.signing_key(s)
            if key is None:
                continue
            signed += 1
            must_verify_until = s + policy.overlap
            for later_time, later in states[i + 1:]:
                if later_time >= must_verify_until:
                    break
                match = [k for k in later.keys if k.kid == key.kid]
                assert match, f"{key.kid} signed at {s} but was removed at {later_time}"
                assert match[0].remove_at >= must_verify_until
    return signed


@pytest.mark.parametrize(("name", "runs"), [
    ("steady, every 5 minutes for 5 periods", every(T0, T0 + 35 * D, timedelta(minutes=5))),
    ("steady, hourly for 10 periods", every(T0, T0 + 70 * D, H)),
    ("down for 10 days in the middle", every(T0, T0 + 10 * D, H) + every(T0 + 20 * D, T0 + 40 * D, H)),
    ("down just across a rotation", every(T0, T0 + 6 * D, H) + every(T0 + 7 * D + 2 * H, T0 + 20 * D, H)),
    ("clock jitter of a few minutes (non-monotonic)",
     [t + timedelta(minutes=(-4, 3, -1, 2)[i % 4]) for i, t in enumerate(every(T0, T0 + 21 * D, H))]),
])
def test_no_token_is_orphaned(name: str, runs: list[datetime]) -> None:
    states = simulate(runs)
    assert check_no_token_orphaned(states) > 0
    for _, ring in states:
        assert len(ring.keys) <= 3, name  # stays small (AWS reads the whole JWKS)


def test_always_one_key_signing_and_one_ahead_when_up() -> None:
    states = simulate(every(T0, T0 + 35 * D, H))
    for now, ring in states:
        current = ring.signing_key(now)
        assert current is not None
        successors = [k for k in ring.keys if k.activate_at > current.activate_at]
        assert successors, f"no key ahead at {now}"
        # The successor is published (in the JWKS) at least the lead before it signs.
        assert all(k.activate_at - k.created_at >= POLICY.lead for k in successors)


def test_new_keys_are_prepublished_except_bootstrap() -> None:
    states = simulate(every(T0, T0 + 50 * D, 2 * H))
    seen: dict[str, ManagedKey] = {}
    for _, ring in states:
        for k in ring.keys:
            seen.setdefault(k.kid, k)
    first = min(seen.values(), key=lambda k: k.created_at)
    assert first.activate_at == first.created_at == T0  # bootstrap: nothing cached anywhere yet
    others = [k for k in seen.values() if k.kid != first.kid]
    assert len(others) >= 6
    assert all(k.activate_at - k.created_at >= POLICY.lead for k in others)


def test_rotation_happens_each_period() -> None:
    states = simulate(every(T0, T0 + 29 * D, H))
    signers = []
    for now, ring in states:
        key = ring.signing_key(now)
        assert key is not None
        if not signers or signers[-1] != key.kid:
            signers.append(key.kid)
    assert len(signers) == 5  # T0, +7d, +14d, +21d, +28d


@pytest.mark.parametrize("downtime", [3 * D, 8 * D, 30 * D])
def test_back_after_downtime_signs_at_once(downtime: timedelta) -> None:
    states = simulate([T0, T0 + H])
    ring = states[-1][1]
    back = T0 + downtime
    result = plan(ring, back, POLICY, fast_key)
    assert result.ring.signing_key(back) is not None
    assert all(k.remove_at > back for k in result.ring.keys)
    assert set(result.removed) == {k.kid for k in ring.keys if k.remove_at <= back}
    check_no_token_orphaned([*states, (back, result.ring)])


def test_retired_key_stays_published_for_max_lifetime_plus_skew() -> None:
    states = simulate(every(T0, T0 + 15 * D, timedelta(minutes=10)))
    retired = {}
    for now, ring in states:
        for k in ring.keys:
            if k.retire_at <= now:
                retired[k.kid] = k
    assert retired
    for k in retired.values():
        assert k.remove_at - k.retire_at >= timedelta(hours=1, minutes=5)


def test_round_trip_through_the_secret_format_keeps_the_plan_stable() -> None:
    ring = simulate(every(T0, T0 + 9 * D, H))[-1][1]
    again = parse_keyring(render_keyring(ring))
    assert [k.kid for k in again.keys] == [k.kid for k in ring.keys]
    assert not plan(again, T0 + 9 * D, POLICY, fast_key).changed


@pytest.mark.parametrize(("text", "words"), [
    ("", "not valid JSON"),
    ("{\"keys\": {}}", "'keys' list"),
    ("{\"keys\": [{\"jwk\": {\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}}]}", "only RSA/RS256 and EC"),
    ("{\"keys\": [7]}", "expected an object"),
])
def test_corrupted_keyset_is_refused_without_echoing_material(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_keyring(text)
    assert words in str(err.value)
    assert "c2VjcmV0" not in str(err.value)


def test_corrupted_windows_are_refused() -> None:
    ring = simulate([T0])[-1][1]
    data = json.loads(render_keyring(ring))
    data["keys"][0]["retireAt"] = "2020-01-01T00:00:00Z"  # before activateAt
    with pytest.raises(ConfigError, match="createdAt <= activateAt <= retireAt <= removeAt"):
        parse_keyring(json.dumps(data))
