"""The status work queue: fresh watch events before replayed (listed) ones, latest object wins, retried until done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gitlab_sts.operator import metrics
from gitlab_sts.operator.retry import Backoff, retryable

Key = tuple[str, str]
Publish = Callable[[Mapping[str, Any]], Awaitable[object]]
log = logging.getLogger("gitlab_sts.operator.status")


class StatusQueue:
    """Binding objects whose .status needs a patch, worked off by a few concurrent workers.

    A key is queued at most once and always with the newest object seen for it; fresh watch events are
    served before the backlog of a listing, so one edit never waits behind a re-list of 10,000 bindings.
    A failed patch is retried with backoff until it succeeds or the binding is gone (publish then
    returns normally); a newer object replaces the one being retried.
    """

    def __init__(self, publish: Publish, *, workers: int = 8, backoff: Backoff | None = None) -> None:
        self._publish = publish
        self._workers = workers
        self._backoff = backoff or Backoff()
        self._pending: dict[Key, Mapping[str, Any]] = {}
        self._fresh: deque[Key] = deque()
        self._replay: deque[Key] = deque()
        self._busy: set[Key] = set()
        self._attempts: dict[Key, int] = {}
        self._waiting: dict[Key, asyncio.TimerHandle] = {}  # keys waiting out a backoff
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.done = 0  # statuses published (patched or found right), for tests and the benchmark

    def __len__(self) -> int:
        return len(self._pending) + len(self._busy) + len(self._waiting)

    def put(self, key: Key, obj: Mapping[str, Any], *, fresh: bool) -> None:
        """Queue (or replace) the object whose status should be published."""
        timer = self._waiting.pop(key, None)
        if timer is not None:  # a newer object replaces the one waiting to be retried: try it now
            timer.cancel()
            fresh = True
        queued = key in self._pending
        self._pending[key] = obj
        if fresh:
            self._fresh.append(key)  # may be in the replay deque too: whichever comes first does the work
        elif not queued:
            self._replay.append(key)
        self._idle.clear()
        self._wake.set()
        metrics.STATUS_QUEUE.set(len(self))

    def _next(self) -> Key | None:
        for lane in (self._fresh, self._replay):
            while lane:
                key = lane.popleft()
                if key in self._pending and key not in self._busy:
                    return key
        return None

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            for i in range(self._workers):
                group.create_task(self._worker(), name=f"status-worker-{i}")

    async def _worker(self) -> None:
        while True:
            key = self._next()
            if key is None:
                if not self._busy and not self._pending:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            obj = self._pending.pop(key)
            self._busy.add(key)
            try:
                await self._publish(obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried; the log says which
                self._retry_later(key, obj, exc)
            else:
                self._attempts.pop(key, None)
                self.done += 1
            finally:
                self._busy.discard(key)
                if key in self._pending:  # a newer object arrived while this one was in flight
                    self._fresh.appendleft(key)
                    self._wake.set()
                metrics.STATUS_QUEUE.set(len(self))

    def _retry_later(self, key: Key, obj: Mapping[str, Any], exc: Exception) -> None:
        if key in self._pending:
            return  # a newer object is queued already; it is what to publish
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        delay = self._backoff.delay(attempt)
        metrics.STATUS_PATCHES.labels(result="retry").inc()
        level = logging.WARNING if retryable(exc) else logging.ERROR
        # One line per binding and failure streak, then one per ten attempts: an outage of the API server
        # would otherwise print thousands of lines a second.
        if attempt == 1 or attempt % 10 == 0:
            log.log(level, "status of %s/%s not written (attempt %d): %s; retrying in %.1fs", key[0], key[1],
                    attempt, exc, delay)
        self._waiting[key] = asyncio.get_running_loop().call_later(delay, self._requeue, key, obj)

    def _requeue(self, key: Key, obj: Mapping[str, Any]) -> None:
        self._waiting.pop(key, None)
        if key not in self._pending:
            self._pending[key] = obj
            self._fresh.append(key)
            self._wake.set()

    def forget(self, key: Key) -> None:
        """Drop queued work for a binding that is gone."""
        self._pending.pop(key, None)
        self._attempts.pop(key, None)
        timer = self._waiting.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def idle(self) -> None:
        """Wait until nothing is queued, in flight or waiting to be retried."""
        while True:
            await self._idle.wait()
            if not len(self):
                return
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Cancel pending retries (on shutdown)."""
        for timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        with contextlib.suppress(Exception):
            self._pending.clear()
