"""List and watch the bindings ourselves: resourceVersion-based, fresh events before the replay of a listing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from gitlab_sts.operator import metrics
from gitlab_sts.operator.kube import TRANSIENT, ApiError, KubeClient
from gitlab_sts.operator.reconcile import Reconciler, pages_of
from gitlab_sts.operator.retry import Backoff

log = logging.getLogger("gitlab_sts.operator.watch")


class Gone(Exception):
    """The watched resourceVersion is too old (HTTP 410 or an ERROR event with code 410): list again."""


class BindingWatcher:
    """One list-then-watch loop per watched scope, feeding the reconciler.

    A listing is replayed in the background while the watch from the listing's resourceVersion already
    runs, so an edit made during a re-list of 10,000 bindings is handled at once. A stream that ends is
    resumed from the last resourceVersion seen; only 410 Gone costs a new listing.
    """

    def __init__(self, client: KubeClient, reconciler: Reconciler, *, timeout_seconds: int = 300,
                 backoff: Backoff | None = None) -> None:
        self._client = client
        self._reconciler = reconciler
        self._timeout = timeout_seconds
        self._backoff = backoff or Backoff(first=1.0, cap=30.0)
        self._first: dict[str, asyncio.Event] = {}
        self._versions: dict[str, str] = {}  # last resourceVersion seen per scope: where a new stream resumes
        self.replays: set[asyncio.Task[int]] = set()

    async def run(self) -> None:
        """Watch every scope until cancelled; the memo is seeded once each scope's first listing is replayed."""
        scopes = self._reconciler.paths()
        self._first = {path: asyncio.Event() for _ns, path in scopes}
        async with asyncio.TaskGroup() as group:
            for ns, path in scopes:
                group.create_task(self._scope(ns, path), name=f"watch {path}")
            group.create_task(self._seed(), name="seed")

    async def _seed(self) -> None:
        for event in self._first.values():
            await event.wait()
        self._reconciler.mark_seeded()
        ready, rejected = self._reconciler.memo.counts()
        log.info("indexed %d bindings (%d ready, %d refused)", ready + rejected, ready, rejected)

    async def seeded(self) -> None:
        """Wait until every scope's first listing has been replayed."""
        while not self._first:
            await asyncio.sleep(0.01)
        for event in self._first.values():
            await event.wait()

    async def _list(self, ns: str | None, path: str, reason: str) -> str:
        """List a scope, replay it in the background, and return the resourceVersion to watch from."""
        attempt = 0
        while True:
            try:
                first = await self._client.list_page(path)
                break
            except TRANSIENT as exc:
                attempt += 1
                delay = self._backoff.delay(attempt)
                log.warning("cannot list bindings (%s): %s; retrying in %.1fs", path, exc, delay)
                await asyncio.sleep(delay)
        metrics.LISTINGS.labels(reason=reason).inc()
        listing = self._reconciler.begin_listing(ns)
        # The rest of the pages are fetched by the replay, one at a time, while the watch already runs.
        task = asyncio.get_running_loop().create_task(
            self._reconciler.replay(listing, pages_of(self._client, path, first)), name=f"replay {path}")
        self.replays.add(task)
        seeded = self._first.get(path)

        def done(t: asyncio.Task[int]) -> None:
            self.replays.discard(t)
            if t.cancelled():
                return
            if t.exception() is not None:
                # A later page failed (connection lost, continue token expired): list again from the start.
                log.warning("listing of %s failed part way: %s; listing again", path, t.exception())
                self.replays.add(asyncio.get_running_loop().create_task(self._relist_later(ns, path)))
            elif seeded is not None:
                seeded.set()
        task.add_done_callback(done)
        return first.version

    async def _relist_later(self, ns: str | None, path: str) -> int:
        await asyncio.sleep(self._backoff.first)
        await self._list(ns, path, "retry")
        return 0

    async def _scope(self, ns: str | None, path: str) -> None:
        self._versions[path] = await self._list(ns, path, "start")
        failures = 0
        while True:
            version = self._versions[path]
            try:
                await self._watch(path, version)
                failures = 0
                metrics.WATCH_RESTARTS.labels(reason="timeout").inc()
            except Gone:
                metrics.WATCH_RESTARTS.labels(reason="gone").inc()
                log.info("bindings watch %s: resourceVersion %s expired; listing again", path, version)
                self._versions[path] = await self._list(ns, path, "gone")
            except TRANSIENT as exc:
                failures += 1
                metrics.WATCH_RESTARTS.labels(reason="error").inc()
                delay = self._backoff.delay(failures)
                # The first drop is routine (API server restart, load balancer idle timeout).
                log.log(logging.INFO if failures == 1 else logging.WARNING,
                        "bindings watch %s ended: %s; resuming from %s in %.1fs", path, exc or type(exc).__name__,
                        version, delay)
                await asyncio.sleep(delay)

    async def _watch(self, path: str, version: str) -> None:
        try:
            async for event in self._client.watch(path, version, timeout_seconds=self._timeout):
                kind = event.get("type")
                obj: Mapping[str, Any] = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""),
                                   str(obj.get("message") or ""))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._reconciler.observe(kind, obj, fresh=True)
                # Bookmarks carry only a resourceVersion: progress for the next stream, nothing to handle.
                seen = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                self._versions[path] = seen or self._versions[path]
                await asyncio.sleep(0)  # a long backlog of events must not starve the status workers
        except ApiError as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
