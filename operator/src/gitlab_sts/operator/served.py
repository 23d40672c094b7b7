"""The Served condition: watch the exchange pods' Leases and remember which documents held which generation.

Each exchange pod renews a Lease of its own listing the digests of the bindings documents its workers serve
(core.served, service/follow.py). The operator remembers, for the last documents it wrote, the generation of
each binding in them; a binding is Served once every live Lease reports only documents that hold its current
generation. A change of what the pods serve (a new digest, a pod gone or new) re-checks every binding's
condition and queues a status patch only for those whose condition changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gitlab_sts.core.served import DocumentHistory, PodReport, live, parse_lease, served_condition
from gitlab_sts.operator.evaluation import Evaluation
from gitlab_sts.operator.kube import TRANSIENT, ApiError, KubeClient, path_for
from gitlab_sts.operator.retry import Backoff

log = logging.getLogger("gitlab_sts.operator.served")
# How often lease expiry is checked (a pod that stops renewing drops out without any event).
TICK_SECONDS = 1.0


class ServedTracker:
    """What the exchange pods serve (from their Leases) and what the written documents held."""

    def __init__(self, client: KubeClient, namespace: str, prefix: str, clock: Callable[[], datetime],
                 history: int = 32) -> None:
        self.client = client
        self.namespace = namespace
        self.prefix = prefix
        self.clock = clock
        self.history = DocumentHistory(history)
        self._leases: dict[str, PodReport] = {}
        self._live: list[PodReport] = []
        self.on_change: Callable[[], None] | None = None  # set by the reconciler: re-check the conditions

    def record(self, digest: str, generations: Mapping[str, int]) -> None:
        """A document the operator wrote (or found written): binding key -> generation."""
        self.history.record(digest, generations)
        self._changed()

    def pods(self) -> list[PodReport]:
        """The live exchange pods' reports."""
        return self._live

    def condition(self, ev: Evaluation, previous: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
        """The binding's Served condition now."""
        return served_condition(f"{ev.namespace}/{ev.name}", ev.generation, ev.ready, self._live, self.history,
                                previous, now)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _refresh(self) -> None:
        """Recompute the live set; tell the reconciler when it changed (who serves what)."""
        now_live = live(self._leases.values(), self.clock())
        if [(p.pod, p.digests) for p in now_live] != [(p.pod, p.digests) for p in self._live]:
            self._live = now_live
            self._changed()
        else:
            self._live = now_live

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """Apply one Lease (listed or from the watch)."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        report = parse_lease(obj, self.prefix) if event_type != "DELETED" else None
        if report is None:
            self._leases.pop(name, None)
        else:
            self._leases[name] = report
        self._refresh()

    async def run(self) -> None:
        """List and watch the Leases of the release namespace until cancelled; check expiry every second."""
        ticker = asyncio.get_running_loop().create_task(self._tick(), name="served-expiry")
        try:
            await self._watch()
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._refresh()

    async def _watch(self) -> None:
        path = path_for("coordination.k8s.io/v1", "leases", self.namespace)
        backoff = Backoff(first=1.0, cap=30.0)
        failures = 0
        while True:
            try:
                items, version = await self.client.list_versioned(path)
                self._leases = {}
                for item in items:
                    self.observe("ADDED", item)
                self._refresh()
                failures = 0
                while True:
                    gone = False
                    async for event in self.client.watch(path, version):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            gone = obj.get("code") == 410
                            if not gone:
                                raise ApiError(int(obj.get("code") or 0), "WatchError", str(obj.get("message")))
                            break
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if kind != "BOOKMARK":
                            self.observe(kind, obj)
                    if gone:
                        break
            except TRANSIENT as exc:
                failures += 1
                delay = backoff.delay(failures)
                log.warning("cannot watch the exchange Leases (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
