"""The per-process state of the exchange service: config snapshots, GitLab key cache, STS client, clock."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gitlab_sts.core.keys import algorithm_switch
from gitlab_sts.core.pinnedjwks import pinned_ages
from gitlab_sts.core.settings import JwksSettings, Settings, StsSettings
from gitlab_sts.service import metrics
from gitlab_sts.service.client import job_client
from gitlab_sts.service.exchange import Collaborators
from gitlab_sts.service.follow import LocalCopy
from gitlab_sts.service.jwks import JwksCache
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.replaystore import ReplayStores
from gitlab_sts.service.state import ConfigState, Snapshot
from gitlab_sts.service.stsclient import StsClient


class Service:
    """What one worker process keeps between requests (built once by create_app)."""

    def __init__(self, paths: ConfigPaths, clock: Callable[[], float] = time.time,
                 local: LocalCopy | None = None) -> None:
        # local: the folder the API follower writes (service/follow.py); paths then point into it.
        self.local = local
        self._served_labels: tuple[str, str, str] | None = None
        self.state = ConfigState(paths)
        self.state.on_bindings = self._served
        self._served(self.state.current())
        self.clock = clock
        snapshot = self.state.current()
        self.jwks = JwksCache(snapshot.settings.jwks if snapshot.settings else JwksSettings())
        self.development_keys = paths.development_keys
        self._sts: tuple[StsSettings, StsClient] | None = None
        # Used when settings turn on tokens.replayProtection: memory per process, or tokens.replayStore.
        self.replay = ReplayStores()
        self.collaborators = Collaborators(gitlab_keys=self.jwks, replay=self.replay, sts=self.sts)
        # Each worker sets the time-driven gauges when it loads, and the watcher keeps them current: a gauge left
        # at 0 by a worker that has not served /metrics yet would win the min across workers (a false alert).
        self.update_gauges()

    def _served(self, snap: Snapshot) -> None:
        """Report the bindings document this worker now serves: the metric, and the file the Lease is made of."""
        source = self.local.sources().get("bindings") if self.local is not None else None
        source = source if isinstance(source, dict) else {}
        labels = (snap.bindings_digest, str(source.get("source") or "files"), str(source.get("resourceVersion") or ""))
        if labels != self._served_labels:
            if self._served_labels is not None:
                metrics.SERVED.labels(*self._served_labels).set(0)
            metrics.SERVED.labels(*labels).set(1)
            self._served_labels = labels
        if self.local is not None and snap.bindings_digest:
            self.local.report_served(snap.bindings_digest)

    def served(self) -> dict[str, Any]:
        """What /readyz says about the served configuration and where it came from."""
        snap = self.state.current()
        out: dict[str, Any] = {"bindings_sha256": snap.bindings_digest, "follow_api": self.local is not None}
        if self.local is not None:
            sources = self.local.sources()
            out["sources"] = {name: {k: v for k, v in entry.items() if k in ("source", "resourceVersion", "synced")}
                              for name, entry in sources.items() if isinstance(entry, dict)}
        return out

    def sts(self, settings: StsSettings) -> StsClient:
        """The STS client for the current settings (rebuilt only when they change)."""
        current = self._sts
        if current is None or current[0] != settings:
            client = StsClient(settings.endpoint, region=settings.region, timeout=settings.timeout,
                               ca_bundle=settings.ca_bundle)
            current = self._sts = (settings, client)
        return current[1]

    def snapshot(self) -> Snapshot:
        """Current config; updates the key-cache settings when settings changed."""
        snap = self.state.current()
        if snap.settings is not None and snap.settings.jwks is not self.jwks.settings:
            self.jwks.configure(snap.settings.jwks)
        return snap

    def now(self) -> datetime:
        """The current time (injectable for tests)."""
        return datetime.fromtimestamp(self.clock(), UTC)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can exchange tokens, and why not."""
        snap = self.snapshot()
        problems = []
        if snap.settings is None:
            problems.append("settings not loaded")
        if snap.index is None:
            problems.append("bindings not loaded")
        now = self.now()
        key = snap.keys.signing_key(now) if snap.keys else None
        if key is None:
            problems.append("no signing key is active")
        detail: dict[str, Any] = {
            "ready": not problems, "problems": problems,
            # Workers load the same files but each keeps its own GitLab key cache (`gitlab`): name the worker.
            "worker": {"pid": os.getpid()},
            "errors": snap.errors,  # a file that failed to load (the last good one is still used)
            "bindings": len(snap.index) if snap.index else 0,
            "bindings_sha256": snap.bindings_digest,
            # Where each input came from (the API or the mounted volume) and the resourceVersion served.
            "served": self.served(),
            # Runner jobs can reach /readyz: a count only, the details (names, errors) go to the log.
            "rejected_bindings": len(snap.rejected),
            "signing_kid": key.kid if key else None,
            "signing_alg": key.alg if key else None,
            # tokens.algorithm changed: which key signs until when (a switch is a key rotation, never abrupt).
            "algorithm_switch": None,
            "development_keys": self.development_keys,
            "issuer": snap.settings.issuer if snap.settings else None,
            "gitlab": self.jwks.status(),
            # The job client at GET /v1/client/login.py and its sha256, for jobs that pin it.
            "client": job_client().summary(),
        }
        if snap.settings is not None:
            s = snap.settings
            # The issuer URL AWS reads: the service's own routes (Ingress) and/or the operator's S3 copy.
            detail["publishing"] = {"issuer": s.issuer, "jwks_uri": s.jwks_uri, "via": list(s.publish.via)}
            switch = algorithm_switch(snap.keys, s.tokens.algorithm, now) if snap.keys else None
            detail["algorithm_switch"] = switch.as_dict() if switch else None
            warnings = pinned_warnings(s, now, snap.pinned_from_operator)
            if warnings:
                detail["warnings"] = warnings  # a stale pinned key set still verifies: warn, stay ready
        return not problems, detail

    def update_gauges(self) -> None:
        """Set the gauges that describe time rather than events (signing key age, pinned key set age)."""
        snap = self.snapshot()
        now = self.now()
        key = snap.keys.signing_key(now) if snap.keys else None
        if key is not None:
            metrics.KEY_AGE.set((now - key.activate_at).total_seconds())
            metrics.KEY_REMAINING.set((key.retire_at - now).total_seconds())
        if snap.settings is not None:
            pinned_warnings(snap.settings, now, snap.pinned_from_operator)


def pinned_warnings(settings: Settings, now: datetime, from_operator: frozenset[str] = frozenset()) -> list[str]:
    """Warnings for pinned GitLab key sets older than pinnedMaxAgeDays (core.pinnedjwks); sets the age metric."""
    out = []
    for pinned in pinned_ages(settings, now, from_operator):
        metrics.PINNED_JWKS_AGE.labels(issuer=pinned.issuer).set(pinned.age.total_seconds())
        if pinned.warning is not None:
            out.append(pinned.warning)
    return out
