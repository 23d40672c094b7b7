"""The operator's long-lived parts: client, memo, writer, reconciler and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import RotationPolicy, generate_key
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.core.timefmt import rfc3339
from gitlab_sts.operator import metrics
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.configsync import ConfigWriter
from gitlab_sts.operator.evaluation import Context
from gitlab_sts.operator.keyrotation import CONFLICT, CORRUPTED, KeyStatus, NewKey, Outcome, policy_for, rotate_once
from gitlab_sts.operator.kube import TRANSIENT, ApiError, Endpoint, KubeClient, path_for
from gitlab_sts.operator.memo import BindingMemo
from gitlab_sts.operator.pinnedrefresh import PinnedRefresher, refresher_for
from gitlab_sts.operator.publish import Publisher, publisher_for
from gitlab_sts.operator.reconcile import COMPONENT, Clock, Reconciler, utc_now
from gitlab_sts.operator.retry import Backoff
from gitlab_sts.operator.served import ServedTracker
from gitlab_sts.operator.watcher import BindingWatcher

log = logging.getLogger("gitlab_sts.operator")
SETTINGS_CHECK_SECONDS = 1.0


def _fingerprint(path: Path) -> tuple[object, ...]:
    """What changes when the file (or the symlink a ConfigMap volume swaps) changes."""
    try:
        st = path.stat()
    except OSError:
        return ("missing",)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
KEY_RETRY = Backoff(first=1.0, cap=30.0)


@dataclass
class Runtime:
    """Everything the handlers share; built by start(), torn down by stop()."""

    cfg: OperatorConfig
    settings: Settings
    client: KubeClient
    memo: BindingMemo
    writer: ConfigWriter
    reconciler: Reconciler
    policy: RotationPolicy
    clock: Clock = utc_now
    new_key: NewKey = generate_key
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    last_keys: Outcome | None = None
    _corruption_reported: str | None = None
    publisher: Publisher | None = None  # S3 publishing and the status ConfigMap
    pinned: PinnedRefresher | None = None  # only when settings name a pinnedJwksSource
    key_status: KeyStatus | None = None  # keys.json of the status ConfigMap
    watcher: BindingWatcher | None = None  # our own list+watch of the bindings (start(loops=True))
    served: ServedTracker | None = None  # the exchange pods' Leases (the Served condition), when configured
    _pinned_task: asyncio.Task[None] | None = None  # replaced when new settings change the pinned sources

    async def check_keys(self) -> Outcome:
        """One key set pass with metrics and, for a corrupted Secret, a Warning event (once per problem)."""
        now = self.clock()
        outcome = await rotate_once(self.client, self.cfg.namespace, self.cfg.keys_secret, self.policy, now,
                                    self.new_key, gate=self.publisher.gate if self.publisher else None)
        if self.publisher is not None and outcome.result not in (CORRUPTED, CONFLICT):
            await self.publisher.write_status(outcome.ring, now)
        if self.key_status is not None:
            await self.key_status.write(outcome, self.policy, now)
        metrics.KEY_ROTATIONS.labels(result=outcome.result).inc()
        metrics.LAST_KEY_CHECK.set(now.timestamp())
        if outcome.result == CORRUPTED:
            metrics.KEYSET_CORRUPTED.set(1)
            log.error("keys Secret unusable: %s", outcome.message)
            if self._corruption_reported != outcome.message:
                await self._secret_event(outcome.message, now)
                self._corruption_reported = outcome.message
        else:
            metrics.KEYSET_CORRUPTED.set(0)
            self._corruption_reported = None
            if outcome.ring is not None:
                metrics.record_keys(outcome.ring, now)
            if outcome.message:
                log.info("keys: %s: %s", outcome.result, outcome.message)
        self.last_keys = outcome
        return outcome

    async def _secret_event(self, message: str, now: datetime) -> None:
        stamp = rfc3339(now)
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{self.cfg.keys_secret}.", "namespace": self.cfg.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Secret", "namespace": self.cfg.namespace,
                               "name": self.cfg.keys_secret},
            "type": "Warning", "reason": "KeySetCorrupted", "message": message[:1000],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.client.create(path_for("v1", "events", self.cfg.namespace), event)
        except ApiError as exc:
            log.warning("could not post the KeySetCorrupted event: %s", exc)

    async def _keys_loop(self) -> None:
        failures = 0
        while True:
            delay = self.cfg.key_check_seconds
            try:
                if (await self.check_keys()).result == CONFLICT:
                    delay = 1.0  # another writer raced us: re-read soon
                if self.publisher is not None and self.publisher.failures:
                    delay = self.publisher.backoff(delay)  # retry a failed upload sooner, backing off
                failures = 0
            except TRANSIENT as exc:
                # A failed read or write of the keys Secret is retried with backoff (1 s up to 30 s).
                failures += 1
                delay = min(delay, KEY_RETRY.delay(failures))
                log.warning("key set check failed (attempt %d, retrying in %.1fs): %s", failures, delay, exc)
            await asyncio.sleep(delay)

    async def _pinned_loop(self) -> None:
        assert self.pinned is not None
        while True:
            delay = self.cfg.pinned_jwks_seconds
            try:
                await self.pinned.refresh(self.clock())
            except TRANSIENT as exc:
                log.error("pinned JWKS refresh failed: %s", exc)
            if self.pinned.failing:
                delay = min(delay, 60.0)  # retry a failed fetch or write sooner; the last copy stays meanwhile
            await asyncio.sleep(delay)

    async def _mend_loop(self) -> None:
        # The periodic check: list every binding and compare its status with what it should be; any
        # difference (a missed event, a status edited by hand) is queued and patched like a fresh one.
        while True:
            await asyncio.sleep(self.cfg.resync_seconds)
            try:
                count = await self.reconciler.resync()
                log.debug("mend: compared the status of %d bindings", count)
            except TRANSIENT as exc:
                log.warning("mend of binding statuses failed (next in %.0fs): %s", self.cfg.resync_seconds, exc)

    async def apply_settings(self, settings: Settings) -> None:
        """Use new settings without a restart: everything built from them is rebuilt, every binding re-evaluated.

        The trusted issuers and the guard decide Ready (and so the config document), the issuer goes into every
        trust policy, the key policy and S3 publishing come from settings, and so do the pinned key set sources.
        """
        self.settings = settings
        self.memo.rebase(Context.from_settings(settings))
        self.policy = policy_for(settings)
        self.publisher = publisher_for(settings, self.policy, self.client, self.cfg.namespace,
                                       self.cfg.status_configmap)
        pinned = refresher_for(settings, self.client, self.cfg.namespace, self.cfg.pinned_jwks_configmap,
                               self.cfg.status_configmap)
        if self._pinned_task is not None:
            self._pinned_task.cancel()
            self._pinned_task = None
        self.pinned = pinned
        if self.pinned is not None and self.tasks:
            self._pinned_task = self._spawn(self._pinned_loop(), "pinned-jwks")
        # A full listing with every status compared: bindings now refused leave the document (one write).
        count = await self.reconciler.resync()
        log.info("settings changed: re-evaluated %d bindings", count)
        if self.tasks:
            with contextlib.suppress(*TRANSIENT):
                await self.check_keys()  # a new key policy (e.g. tokens.algorithm) acts now, not in 5 minutes

    async def _settings_loop(self) -> None:
        # The mounted settings.yaml (a ConfigMap volume: the kubelet swaps a symlink) is checked every second.
        path = self.cfg.settings_file
        seen = _fingerprint(path)
        while True:
            await asyncio.sleep(SETTINGS_CHECK_SECONDS)
            now = _fingerprint(path)
            if now == seen:
                continue
            seen = now
            try:
                settings = parse_settings(path.read_text(), str(path))
            except (OSError, ConfigError, ValueError) as exc:
                metrics.SETTINGS_RELOADS.labels(result="error").inc()
                log.error("settings.yaml changed but cannot be used; keeping the previous settings: %s", exc)
                continue
            if settings == self.settings:
                continue
            try:
                await self.apply_settings(settings)
                metrics.SETTINGS_RELOADS.labels(result="applied").inc()
            except TRANSIENT as exc:
                seen = ()  # the listing failed: try again at the next check
                metrics.SETTINGS_RELOADS.labels(result="error").inc()
                log.warning("applying new settings failed, retrying: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def start(self, *, loops: bool = True) -> None:
        """Start watching bindings, the status workers, the writer and the loops (loops=False: one listing, writer)."""
        if not loops:
            count = await self.reconciler.resync()
            log.info("indexed %d bindings", count)
            self._spawn(self.writer.run(), "config-writer")
            return
        self.watcher = BindingWatcher(self.client, self.reconciler, timeout_seconds=self.cfg.watch_timeout_seconds)
        self._spawn(self.watcher.run(), "binding-watch")
        self._spawn(self.reconciler.queue.run(), "status-queue")
        self._spawn(self.writer.run(), "config-writer")
        self._spawn(self._keys_loop(), "key-rotation")
        self._spawn(self._mend_loop(), "mend")
        if self.served is not None:
            self._spawn(self.served.run(), "served-leases")
        self._spawn(self._settings_loop(), "settings")
        if self.pinned is not None:
            self._pinned_task = self._spawn(self._pinned_loop(), "pinned-jwks")

    def healthy(self) -> dict[str, Any]:
        """Liveness detail; raises when a background loop died."""
        for task in self.tasks:
            if task.done() and not task.cancelled():
                raise RuntimeError(f"background task {task.get_name()} stopped: {task.exception()!r}")
        return {
            "bindings": len(self.memo), "statusQueue": len(self.reconciler.queue),
            "configDigest": self.writer.written_digest,
            "configError": self.writer.last_error,
            "keys": self.last_keys.result if self.last_keys else None,
            "publishError": self.publisher.last_error if self.publisher else None,
            "pinnedJwksError": self.pinned.last_error if self.pinned else None,
        }

    async def stop(self) -> None:
        """Cancel the loops, write what is pending (best effort) and close the client."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.reconciler.queue.close()
        with contextlib.suppress(*TRANSIENT):
            await self.writer.flush()
        await self.client.close()


def build_runtime(cfg: OperatorConfig, settings: Settings, endpoint: Endpoint, *, clock: Clock = utc_now,
                  new_key: NewKey = generate_key) -> Runtime:
    """Wire the parts together (no I/O yet)."""
    client = KubeClient(endpoint)
    memo = BindingMemo(Context.from_settings(settings))
    writer = ConfigWriter(client, memo, cfg.namespace, cfg.bindings_configmap, cfg.debounce_seconds)
    reconciler = Reconciler(client, memo, writer, cfg.watch_namespaces, clock)
    policy = policy_for(settings)
    publisher = publisher_for(settings, policy, client, cfg.namespace, cfg.status_configmap)
    pinned = refresher_for(settings, client, cfg.namespace, cfg.pinned_jwks_configmap, cfg.status_configmap)
    served = None
    if cfg.exchange_lease_prefix:
        served = ServedTracker(client, cfg.namespace, cfg.exchange_lease_prefix, clock)
        reconciler.track_served(served)
        writer.on_written = served.record
    return Runtime(cfg, settings, client, memo, writer, reconciler, policy, clock, new_key, publisher=publisher,
                   pinned=pinned, key_status=KeyStatus(client, cfg.namespace, cfg.status_configmap), served=served)
