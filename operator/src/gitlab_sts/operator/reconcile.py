"""Binding objects -> memo, status work and events; listings replayed behind fresh watch events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gitlab_sts.core.bindings import GROUP, VERSION
from gitlab_sts.core.served import SERVED
from gitlab_sts.operator import metrics
from gitlab_sts.operator.configsync import ConfigWriter
from gitlab_sts.operator.evaluation import (
    Evaluation,
    condition_of,
    desired_status,
    rejected_anew,
    rejection_event,
    status_patch,
)
from gitlab_sts.operator.kube import ApiError, KubeClient, Page, path_for
from gitlab_sts.operator.memo import BindingMemo
from gitlab_sts.operator.served import ServedTracker
from gitlab_sts.operator.statusqueue import StatusQueue

PLURAL = "gitlabawsbindings"
COMPONENT = "gitlab-sts-operator"
# Listed objects handled between two yields to the event loop: fresh watch events and status workers get
# their turn every few milliseconds even while 10,000 listed bindings are evaluated.
REPLAY_CHUNK = 20
log = logging.getLogger("gitlab_sts.operator.bindings")
Clock = Callable[[], datetime]
Key = tuple[str, str]


async def pages_of(client: KubeClient, path: str, first: Page) -> AsyncIterator[list[dict[str, Any]]]:
    """The items of a listing page by page, starting with the page already fetched."""
    yield first.items
    async for page in client.more_pages(path, first):
        yield page.items


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What status work needs of a binding object: identity, generation, resourceVersion and status.

    Kept for every binding (Served re-checks, the status queue): without the spec, managedFields and
    annotations that made a listed object ~10 KiB in memory; the spec is evaluated from the full object.
    """
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("namespace", "name", "uid", "resourceVersion", "generation", "deletionTimestamp")
            if k in meta}
    out: dict[str, Any] = {"metadata": kept, "status": obj.get("status")}
    return out


def utc_now() -> datetime:
    """The wall clock in UTC."""
    return datetime.now(UTC)


def key_of(obj: Mapping[str, Any]) -> Key:
    """(namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass
class Listing:
    """One full listing being replayed: its scope, what it held, and what fresh events overtook it."""

    namespace: str | None  # None: every namespace
    seen: set[Key] = field(default_factory=set)
    overtaken: set[Key] = field(default_factory=set)  # keys with a watch event newer than the listing

    def covers(self, key: Key) -> bool:
        """Whether the key is in this listing's scope."""
        return self.namespace is None or key[0] == self.namespace


class Reconciler:
    """Applies binding objects to the memo, queues status patches when they differ, posts rejection events."""

    def __init__(self, client: KubeClient, memo: BindingMemo, writer: ConfigWriter,
                 watch_namespaces: Iterable[str] = (), clock: Clock = utc_now, *, status_workers: int = 8) -> None:
        self.client = client
        self.memo = memo
        self.writer = writer
        self.watch_namespaces = tuple(watch_namespaces)
        self.clock = clock
        self.queue = StatusQueue(self._publish_queued, workers=status_workers)
        self._versions: dict[Key, str] = {}  # resourceVersion last handled per binding
        self._listings: list[Listing] = []
        # What the exchange pods serve (None: not tracked, no Served condition); the latest object per binding,
        # so that a change of what the pods serve can queue the bindings whose Served condition changes.
        self.served: ServedTracker | None = None
        self._objects: dict[Key, Mapping[str, Any]] = {}
        self._recheck: asyncio.Handle | None = None
        # Bindings edited (fresh events) whose Served condition is not True yet: their re-checked status goes to
        # the front of the queue, everyone else's (a pod started or went away) behind it.
        self._recent: set[Key] = set()

    def track_served(self, tracker: ServedTracker) -> None:
        """Add the Served condition (from the exchange pods' Leases) to every binding's status."""
        self.served = tracker
        tracker.on_change = self.served_changed

    def desired(self, ev: Evaluation, current: Any) -> dict[str, Any]:
        """The status a binding should have now, with its Served condition when tracked."""
        now = self.clock()
        served = self.served.condition(ev, condition_of(current, SERVED), now) if self.served else None
        return desired_status(ev, current, now, served)

    def served_changed(self) -> None:
        """What the pods serve (or what a written document holds) changed: re-check soon, once per burst."""
        if self._recheck is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (pure tests): nothing is queued anyway
        self._recheck = loop.call_later(0.05, self.recheck_served)

    def recheck_served(self) -> int:
        """Queue every binding whose status differs from what it should be now; returns how many."""
        self._recheck = None
        queued = 0
        for key, obj in list(self._objects.items()):
            ev = self.memo.get(key)
            if ev is None:
                continue
            desired = self.desired(ev, obj.get("status"))
            if status_patch(obj.get("status"), desired) is not None:
                self.queue.put(key, obj, fresh=key in self._recent)
                queued += 1
            served = condition_of(desired, SERVED)
            if served is not None and served.get("status") == "True":
                self._recent.discard(key)
        return queued

    # -- one object ------------------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Mapping[str, Any], *, fresh: bool,
                listing: Listing | None = None, check_unchanged: bool = True) -> Evaluation | None:
        """Apply one object (watch event or listed item) to the memo and queue its status if it differs.

        fresh: a watch event (served first). check_unchanged: skip an object whose resourceVersion was
        handled already (a re-watch replaying objects); the periodic mend passes False to compare every status.
        """
        started = time.perf_counter()
        key = key_of(obj)
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or "")
        stored = obj
        if event_type != "DELETED" and not meta.get("deletionTimestamp"):
            stored = slim(obj)  # kept for every binding: only what status work reads, not spec or managedFields
            self._objects[key] = stored
        if fresh:
            for active in self._listings:
                if active.covers(key):
                    active.overtaken.add(key)
        elif listing is not None:
            listing.seen.add(key)
            if key in listing.overtaken:  # a watch event already brought a newer object
                metrics.SKIPPED.inc()
                return self.memo.get(key)
        if event_type != "DELETED" and check_unchanged and version and self._versions.get(key) == version \
                and key in self.memo:
            metrics.SKIPPED.inc()
            return self.memo.get(key)
        metrics.EVENTS.labels(type=event_type or "LISTED").inc()
        try:
            if event_type == "DELETED" or meta.get("deletionTimestamp"):
                # Out of the config at once, even while other finalizers still hold the object.
                self._forget(key)
                return None
            before = self.memo.get(key)
            ev = self._apply(key, obj, int(meta.get("generation") or 0))
            edited = before is None or before.generation != ev.generation
            if fresh and self.served is not None and edited:
                self._recent.add(key)  # an edit: its Served condition goes first once the pods serve it
            self._versions[key] = version
            if status_patch(obj.get("status"), self.desired(ev, obj.get("status"))) is not None:
                # With Served tracked, the echo of our own patch can differ again (the pods moved on meanwhile):
                # such a status-only difference waits behind the edits, which stay first.
                self.queue.put(key, stored, fresh=fresh and (self.served is None or edited or key in self._recent))
            return ev
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _apply(self, key: Key, obj: Mapping[str, Any], generation: int) -> Evaluation:
        ev = self.memo.evaluate(key[0], key[1], obj.get("spec"), generation)
        if self.memo.upsert(ev):
            self.writer.poke()
        self._count()
        return ev

    def _forget(self, key: Key) -> None:
        self._objects.pop(key, None)
        self._recent.discard(key)
        if self.memo.remove(key):
            self.writer.poke()
        self._versions.pop(key, None)
        self.queue.forget(key)
        self._count()

    async def on_event(self, event_type: str | None, obj: Mapping[str, Any]) -> Evaluation | None:
        """Handle one object now, publishing its status directly (no queue, no retry): tests and tools."""
        key = key_of(obj)
        meta = obj.get("metadata") or {}
        metrics.EVENTS.labels(type=event_type or "LISTED").inc()
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._forget(key)
            return None
        ev = self._apply(key, obj, int(meta.get("generation") or 0))
        await self.publish_status(obj, ev)
        return ev

    async def _publish_queued(self, obj: Mapping[str, Any]) -> None:
        ev = self.memo.get(key_of(obj))
        if ev is None:
            return  # deleted meanwhile
        await self.publish_status(obj, ev)

    async def publish_status(self, obj: Mapping[str, Any], ev: Evaluation) -> bool:
        """Patch .status if it differs from the evaluation; post a Warning event for a new rejection."""
        current = obj.get("status")
        now = self.clock()
        patch = status_patch(current, self.desired(ev, current))
        if patch is None:
            return False
        announce = rejected_anew(ev, current)
        try:
            await self.client.merge_patch(path_for(f"{GROUP}/{VERSION}", PLURAL, ev.namespace, ev.name, "status"),
                                          patch)
            metrics.STATUS_PATCHES.labels(result="patched").inc()
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile; the DELETED event follows
                metrics.STATUS_PATCHES.labels(result="gone").inc()
                return False
            metrics.STATUS_PATCHES.labels(result="error").inc()
            raise
        if announce:
            log.warning("binding %s/%s refused: %s: %s", ev.namespace, ev.name, ev.reason, ev.message)
            try:
                await self.client.create(path_for("v1", "events", ev.namespace),
                                         rejection_event(obj, ev, now, COMPONENT))
            except ApiError as exc:  # an event is a courtesy; the status already says why
                log.warning("could not post an event for %s/%s: %s", ev.namespace, ev.name, exc)
        return True

    # -- listings --------------------------------------------------------------------------------------

    def paths(self) -> list[tuple[str | None, str]]:
        """(namespace or None, collection path) of every watched scope."""
        api = f"{GROUP}/{VERSION}"
        if self.watch_namespaces:
            return [(ns, path_for(api, PLURAL, ns)) for ns in self.watch_namespaces]
        return [(None, path_for(api, PLURAL))]

    async def list_bindings(self) -> list[dict[str, Any]]:
        """Every binding in the watched namespaces (paginated)."""
        items: list[dict[str, Any]] = []
        for _ns, path in self.paths():
            items.extend((await self.client.list_versioned(path))[0])
        return items

    def begin_listing(self, namespace: str | None) -> Listing:
        """Start replaying a listing: watch events from now on overtake its items."""
        listing = Listing(namespace)
        self._listings.append(listing)
        return listing

    async def replay(self, listing: Listing, pages: AsyncIterable[list[dict[str, Any]]] | Iterable[Mapping[str, Any]],
                     *, mend: bool = False) -> int:
        """Apply listed items in small chunks behind fresh events, then drop what the listing no longer holds.

        pages: the listing's pages as they are fetched (or one plain iterable of items).
        """
        try:
            if isinstance(pages, AsyncIterable):
                async for page in pages:
                    await self._replay_items(listing, page, mend)
            else:
                await self._replay_items(listing, list(pages), mend)  # type: ignore[arg-type]
            gone = [k for k in self.memo.all_keys() if listing.covers(k) and k not in listing.seen
                    and k not in listing.overtaken]
            for key in gone:
                self._forget(key)
        finally:
            self._listings.remove(listing)
        return len(listing.seen)

    async def _replay_items(self, listing: Listing, items: list[dict[str, Any]], mend: bool) -> None:
        # Items are dropped as they are applied: only one page of raw objects is alive at a time.
        items.reverse()
        count = 0
        while items:
            self.observe(None, items.pop(), fresh=False, listing=listing, check_unchanged=not mend)
            count += 1
            if count % REPLAY_CHUNK == 0:
                await asyncio.sleep(0)

    async def resync(self) -> int:
        """List every scope and replay it (mending every status), then mark the memo seeded; returns the count."""
        count = 0
        for ns, path in self.paths():
            first = await self.client.list_page(path)
            count += await self.replay(self.begin_listing(ns), pages_of(self.client, path, first), mend=True)
        self.mark_seeded()
        self._count()
        return count

    def mark_seeded(self) -> None:
        """The first full listing is in: the ConfigMap may be written from now on."""
        if not self.memo.seeded:
            self.memo.seeded = True
            self.writer.poke()

    def _count(self) -> None:
        ready, rejected = self.memo.counts()
        metrics.BINDINGS.labels(state="ready").set(ready)
        metrics.BINDINGS.labels(state="rejected").set(rejected)
