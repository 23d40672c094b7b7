"""Clock skew on either side, replay protection and maximum token age (in-process, injected clock)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts.core.errors import InvalidRequest, TemporarilyUnavailable
from gitlab_sts.core.replay import MemoryReplayStore, check_first_use
from gitlab_sts.core.verify import VerifiedToken
from gitlab_sts.service import metrics
from tests.fuzz.appkit import App, assert_refused, make_app

NOW = float(int(time.time()))


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.getLogger("gitlab_sts").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("gitlab_sts").setLevel(logging.INFO)


def _denied(reason: str) -> float:
    value: float = metrics.EXCHANGES.labels(endpoint="/v1/token", result="denied", reason=reason)._value.get()
    return value


@pytest.fixture
def app(tmp_path: Path) -> App:
    """Service clock fixed at NOW, leeway 30 s."""
    return make_app(tmp_path, clock=lambda: NOW, leeway=30)


def _at(app: App, iat: float, lifetime: int = 3600, **claims: Any) -> str:
    return app.staging(iat=int(iat), nbf=int(iat) - 5, exp=int(iat) + lifetime, **claims)


def test_gitlab_clock_ahead_within_leeway_is_accepted(app: App) -> None:
    # iat 20 s and nbf 15 s in the service's future: GitLab's clock runs ahead, within the 30 s leeway.
    answer = app.exchange(_at(app, NOW + 20))
    assert answer.status_code == 200, answer.get_json()


def test_gitlab_clock_ahead_beyond_leeway_is_refused(app: App) -> None:
    before = _denied("not_yet_valid")
    body = assert_refused(app.exchange(_at(app, NOW + 120)), (400,))
    assert "not valid yet" in body["error_description"] or "future" in body["error_description"]
    assert _denied("not_yet_valid") == before + 1


def test_service_clock_ahead_token_just_expired_within_leeway(app: App) -> None:
    # The token expired 10 s ago by the service's clock: it still verifies (leeway), but nothing can be
    # minted that would not outlive it, so the answer is a clear 400 "expires too soon", never a token.
    body = assert_refused(app.exchange(_at(app, NOW - 3610)), (400,))
    assert "expires too soon" in body["error_description"]


def test_service_clock_ahead_beyond_leeway_is_expired(app: App) -> None:
    before = _denied("expired")
    body = assert_refused(app.exchange(_at(app, NOW - 3700)), (400,))
    assert "expired" in body["error_description"]
    assert _denied("expired") == before + 1


def test_minted_token_never_outlives_a_skewed_source(app: App) -> None:
    answer = app.exchange(_at(app, NOW - 3000))  # 600 s of the GitLab token left
    assert answer.status_code == 200
    assert answer.get_json()["expires_in"] == 600


def test_tokens_are_reusable_by_default(app: App) -> None:
    token = _at(app, NOW)
    assert app.exchange(token).status_code == 200
    assert app.exchange(token).status_code == 200


def test_replay_protection_accepts_a_token_once(tmp_path: Path) -> None:
    app = make_app(tmp_path, clock=lambda: NOW, replayProtection=True)
    token = _at(app, NOW)
    # A refused request does not use the token up (the check runs just before signing).
    assert_refused(app.exchange(token, resource="arn:aws:iam::111122223333:role/other"), (403,))
    assert app.exchange(token).status_code == 200
    before = _denied("replayed")
    body = assert_refused(app.exchange(token), (400,))
    assert "already exchanged" in body["error_description"]
    assert _denied("replayed") == before + 1
    # Another job's token (another jti) is unaffected.
    assert app.exchange(_at(app, NOW)).status_code == 200


def test_maximum_source_age(tmp_path: Path) -> None:
    app = make_app(tmp_path, clock=lambda: NOW, maxSourceAgeSeconds=300)
    assert app.exchange(_at(app, NOW - 200)).status_code == 200
    before = _denied("too_old")
    body = assert_refused(app.exchange(_at(app, NOW - 400)), (400,))
    assert "maxSourceAgeSeconds" in body["error_description"]
    assert _denied("too_old") == before + 1


def _verified(jti: Any, exp: int) -> VerifiedToken:
    from gitlab_sts.core.settings import GitLabInstance

    instance = GitLabInstance(issuer="https://gitlab.example.com", audiences=("a",))
    return VerifiedToken(instance=instance, claims={"jti": jti, "exp": exp}, kid=None)


def test_replay_store_forgets_expired_tokens_and_refuses_when_full() -> None:
    store = MemoryReplayStore(max_entries=2)
    check_first_use(store, _verified("a", 100), now=50, leeway=0)
    with pytest.raises(InvalidRequest, match="already exchanged"):
        check_first_use(store, _verified("a", 100), now=60, leeway=0)
    check_first_use(store, _verified("b", 100), now=60, leeway=0)
    # Full of live entries: refuse (503) rather than forget one and allow a replay.
    with pytest.raises(TemporarilyUnavailable):
        check_first_use(store, _verified("c", 100), now=70, leeway=0)
    # After they expire, room is made and an expired id may be seen again (it no longer verifies anyway).
    check_first_use(store, _verified("c", 300), now=150, leeway=0)
    assert len(store) == 1
    with pytest.raises(InvalidRequest, match="jti"):
        check_first_use(store, _verified(None, 300), now=150, leeway=0)


def test_readyz_with_pinned_gitlab_keys_after_an_exchange(app: App) -> None:
    # Regression: pinned key sets have an infinite fetch time, which /readyz used to round (HTTP 500).
    assert app.exchange(_at(app, NOW)).status_code == 200
    answer = app.client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["gitlab"]["https://gitlab.example.com"]["cached"] is True
