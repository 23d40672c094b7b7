"""Single use of GitLab tokens: remember (issuer, jti) until the token expires.

The default store lives in one process's memory, so with several gunicorn workers or replicas a token
can still be used once per worker process. tokens.replayStore names a shared Redis/Valkey store
(service/replaystore.py: `SET key 1 NX EXAT exp`) that makes it once in the whole deployment; when that
store cannot answer, the exchange fails closed (503).
"""

from __future__ import annotations

import threading
from typing import Protocol

from gitlab_sts.core.errors import InvalidRequest, TemporarilyUnavailable
from gitlab_sts.core.verify import VerifiedToken

# Bound on remembered tokens per process; expired entries are dropped first.
MAX_ENTRIES = 100_000


class ReplayStore(Protocol):
    """Atomic check-and-remember of a token id until a time."""

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """Remember key until expires_at; True the first time, False when already remembered."""


class StoreFull(Exception):
    """The store cannot remember another token (refuse rather than forget one)."""


class StoreUnavailable(Exception):
    """The shared store cannot answer (refuse rather than let a token be used twice)."""


class MemoryReplayStore:
    """ReplayStore in this process's memory (per gunicorn worker)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """Remember key until expires_at; True the first time."""
        with self._lock:
            known = self._seen.get(key)
            if known is not None and known > now:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                if len(self._seen) >= self.max_entries:
                    raise StoreFull
            self._seen[key] = expires_at
            return True


def check_first_use(store: ReplayStore, verified: VerifiedToken, *, now: float, leeway: int) -> None:
    """Refuse a GitLab token whose (issuer, jti) was already exchanged, or that has no jti."""
    jti = verified.claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidRequest("token has no 'jti'; replay protection needs one", reason="missing_claim")
    # Remembered past exp by the leeway: until then the token still verifies.
    expires_at = float(verified.claims["exp"]) + leeway
    try:
        first = store.first_use(f"{verified.instance.issuer} {jti}", expires_at, now)
    except StoreFull:
        raise TemporarilyUnavailable("too many tokens in flight to check for replay; retry shortly",
                                     reason="replay_store_full") from None
    except StoreUnavailable:
        raise TemporarilyUnavailable("the replay store cannot be reached to check single use; retry shortly",
                                     reason="replay_store_unavailable") from None
    if not first:
        raise InvalidRequest("this GitLab token was already exchanged (tokens.replayProtection); "
                             "request a new ID token", reason="replayed")
