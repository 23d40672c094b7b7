"""Binding events -> memo, status and events; full listings for startup and resync. Thin over the pure builders."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from gitlab_sts.core.bindings import GROUP, VERSION
from gitlab_sts.operator import metrics
from gitlab_sts.operator.configsync import ConfigWriter
from gitlab_sts.operator.evaluation import Evaluation, desired_status, rejected_anew, rejection_event, status_patch
from gitlab_sts.operator.kube import ApiError, KubeClient, path_for
from gitlab_sts.operator.memo import BindingMemo

PLURAL = "gitlabawsbindings"
COMPONENT = "gitlab-sts-operator"
log = logging.getLogger("gitlab_sts.operator.bindings")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock in UTC."""
    return datetime.now(UTC)


class Reconciler:
    """Applies binding watch events to the memo, patches status when it differs, posts rejection events."""

    def __init__(self, client: KubeClient, memo: BindingMemo, writer: ConfigWriter,
                 watch_namespaces: Iterable[str] = (), clock: Clock = utc_now) -> None:
        self.client = client
        self.memo = memo
        self.writer = writer
        self.watch_namespaces = tuple(watch_namespaces)
        self.clock = clock

    async def on_event(self, event_type: str | None, obj: Mapping[str, Any]) -> Evaluation | None:
        """Handle one watch event (None is kopf's type for the initial listing)."""
        started = time.perf_counter()
        metrics.EVENTS.labels(type=event_type or "LISTED").inc()
        try:
            return await self._on_event(event_type, obj)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    async def _on_event(self, event_type: str | None, obj: Mapping[str, Any]) -> Evaluation | None:
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            # Out of the config at once, even while other finalizers still hold the object.
            if self.memo.remove((namespace, name)):
                self.writer.poke()
            self._count()
            return None
        ev = self.memo.evaluate(namespace, name, obj.get("spec"), int(meta.get("generation") or 0))
        if self.memo.upsert(ev):
            self.writer.poke()
        self._count()
        await self.publish_status(obj, ev)
        return ev

    async def publish_status(self, obj: Mapping[str, Any], ev: Evaluation) -> bool:
        """Patch .status if it differs from the evaluation; post a Warning event for a new rejection."""
        current = obj.get("status")
        now = self.clock()
        patch = status_patch(current, desired_status(ev, current, now))
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

    async def list_bindings(self) -> list[dict[str, Any]]:
        """Every binding in the watched namespaces (paginated)."""
        api = f"{GROUP}/{VERSION}"
        paths = [path_for(api, PLURAL, ns) for ns in self.watch_namespaces] or [path_for(api, PLURAL)]
        items: list[dict[str, Any]] = []
        for path in paths:
            items.extend([item async for item in self.client.list_all(path)])
        return items

    async def resync(self) -> int:
        """Rebuild the memo from a full listing (startup and periodic repair); returns the binding count."""
        items = await self.list_bindings()
        evaluations = []
        for obj in items:
            meta = obj.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            evaluations.append(self.memo.evaluate(str(meta.get("namespace") or ""), str(meta.get("name") or ""),
                                                  obj.get("spec"), int(meta.get("generation") or 0)))
        changed = self.memo.replace_all(evaluations)
        first = not self.memo.seeded
        self.memo.seeded = True
        if changed or first:
            self.writer.poke()
        self._count()
        return len(evaluations)

    def _count(self) -> None:
        ready, rejected = self.memo.counts()
        metrics.BINDINGS.labels(state="ready").set(ready)
        metrics.BINDINGS.labels(state="rejected").set(rejected)
