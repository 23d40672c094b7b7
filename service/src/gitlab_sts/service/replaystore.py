"""The replay store that settings name: this process's memory (default), or a Redis/Valkey shared by every replica.

Memory (tokens.replayProtection alone): a GitLab token is exchanged at most once per worker process, so with
R replicas of W workers up to R x W times. A shared store (tokens.replayStore.urlFile) makes it once in the
whole deployment: `SET <key> 1 NX EXAT <exp + leeway>` is atomic on the server, and the key expires when the
token could no longer verify anyway. When the store cannot answer, the exchange fails closed: 503
temporarily_unavailable (the job retries) and gitlab_sts_replay_store_errors_total counts it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from pathlib import Path

import redis

from gitlab_sts.core.replay import MemoryReplayStore, ReplayStore, StoreUnavailable
from gitlab_sts.core.settings import ReplayStoreSettings, TokenSettings
from gitlab_sts.service import metrics

log = logging.getLogger("gitlab_sts.service.replay")
KEY_PREFIX = "gitlab-sts:replay:"


class RedisReplayStore:
    """ReplayStore on a Redis/Valkey server (redis:// or rediss:// URL, password inside the URL if any)."""

    def __init__(self, url: str, timeout: float) -> None:
        # One connection pool per worker process, created after the fork (the first exchange builds it).
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                            retry_on_timeout=False)

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """SET NX with an absolute expiry: True for the first caller in the whole deployment."""
        # Hashed: a bounded key size whatever the jti, and no claim values in the store.
        name = KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()
        try:
            created = self._client.set(name, b"1", nx=True, exat=max(math.ceil(expires_at), math.floor(now) + 1))
        except (redis.RedisError, OSError) as exc:
            metrics.REPLAY_STORE_ERRORS.inc()
            log.warning("replay store failed", extra={"event": "replay_store", "error": type(exc).__name__})
            raise StoreUnavailable from None
        return created is True

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class ReplayStores:
    """Gives the store for the current token settings; the shared one is rebuilt when its settings change."""

    def __init__(self) -> None:
        self.memory = MemoryReplayStore()
        self._shared: tuple[ReplayStoreSettings, ReplayStore] | None = None
        self._lock = threading.Lock()

    def __call__(self, tokens: TokenSettings) -> ReplayStore:
        """The memory store, or the shared store of tokens.replayStore."""
        config = tokens.replay_store
        if config is None:
            return self.memory
        current = self._shared
        if current is not None and current[0] == config:
            return current[1]
        with self._lock:
            try:
                url = Path(config.url_file).read_text().strip()
            except OSError as exc:
                metrics.REPLAY_STORE_ERRORS.inc()
                log.warning("cannot read the replay store URL", extra={"event": "replay_store",
                                                                       "file": config.url_file,
                                                                       "error": exc.strerror})
                return _Unavailable()
            store = RedisReplayStore(url, config.timeout_seconds)
            old, self._shared = self._shared, (config, store)
            if old is not None and isinstance(old[1], RedisReplayStore):
                old[1].close()
            return store


class _Unavailable:
    """The shared store named in settings cannot be used: every check fails closed."""

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """Refuse."""
        raise StoreUnavailable
