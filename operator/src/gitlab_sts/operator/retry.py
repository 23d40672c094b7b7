"""Which API failures are worth retrying, and the backoff between attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass

import aiohttp

from gitlab_sts.operator.kube import ApiError

# 403: RBAC being fixed or a webhook refusing for now; 409: a concurrent writer; 429: API priority and
# fairness; 5xx: the API server or etcd in trouble. All pass with time; 404 means the object is gone.
RETRY_STATUSES = frozenset({403, 409, 429}) | frozenset(range(500, 600))


def retryable(exc: BaseException) -> bool:
    """Whether a failed API call may succeed later (status above, or the connection was lost or timed out)."""
    if isinstance(exc, ApiError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: first, first*2, ... capped at cap (seconds)."""

    first: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (1 = the first retry)."""
        base = min(self.cap, self.first * 2.0 ** min(max(0, attempt - 1), 30))
        # Jitter spreads the retries of thousands of bindings after one API server outage.
        return base * (0.5 + random.random() / 2)  # noqa: S311 - not for security
