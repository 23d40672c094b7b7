"""Follow the config objects through the API, keep the mounted volumes as the fallback, report what is served.

The kubelet refreshes mounted ConfigMaps and Secrets only on its periodic sync (about a minute), too slow
for a binding that was deleted. So one process per pod (whichever gunicorn worker holds a lock file) watches
exactly the settings, bindings and pinned key set ConfigMaps and the keys Secret (one watch each, read-only
RBAC limited by resourceNames) and writes each received copy atomically into a local folder. Every worker
already reloads from that folder (ConfigState polls file fingerprints every 0.2 s), so a change is served
well within a second of the API server accepting it.

The volumes stay the fallback. The folder is seeded from them when the pod starts, so a pod that starts while
the API server is down serves what the kubelet mounted. While a watch is not synced, a volume copy whose
content the API never delivered is newer than what the folder holds (the kubelet only moves forward) and
replaces it; content the API already delivered is old news and is ignored, so a lagging volume never brings
a deleted binding back.

The same process renews a coordination.k8s.io Lease of its own carrying the digests of the bindings
documents the pod's workers serve; the operator reads those Leases to tell, in each binding's status,
whether every exchange pod serves its current generation.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The Lease the operator reads (core.served): labels, and the annotation listing the served document digests.
from gitlab_sts.core.served import LEASE_LABELS, SERVED_ANNOTATION
from gitlab_sts.service.kubeapi import KubeAccess, KubeApi, KubeError, object_path, write_atomically
from gitlab_sts.service.paths import ConfigPaths, fingerprint

log = logging.getLogger("gitlab_sts.service.follow")

SETTINGS, BINDINGS, KEYS, PINNED = "settings", "bindings", "keys", "pinned"
INPUTS = (SETTINGS, BINDINGS, KEYS, PINNED)
SETTINGS_KEY = "settings.yaml"
SOURCES_FILE = "sources.json"
# Digests the API delivered, per input: volume content among them is not newer than what the API gave.
SEEN_LIMIT = 256
POLL_SECONDS = 0.1
WATCH_SECONDS = 240  # the server ends a watch after this; it is re-opened from the last resourceVersion


@dataclass(frozen=True)
class FollowConfig:
    """Which objects the pod follows and how it names its Lease (the chart sets these variables)."""

    namespace: str
    settings_configmap: str = "gitlab-sts-settings"
    bindings_configmap: str = "gitlab-sts-bindings"
    keys_secret: str = "gitlab-sts-keys"  # noqa: S105 - a Secret name, not a secret
    pinned_configmap: str = "gitlab-sts-pinned-jwks"
    pod_name: str = ""
    lease_prefix: str = "gitlab-sts-exchange"
    lease_seconds: int = 15
    renew_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FollowConfig | None:
        """GITLAB_STS_FOLLOW_API=true turns following on; None when off."""
        env = os.environ if env is None else env
        if env.get("GITLAB_STS_FOLLOW_API", "").strip().lower() not in ("1", "true", "yes"):
            return None
        d = cls(namespace="")
        return cls(
            namespace=env.get("GITLAB_STS_NAMESPACE", "").strip(),
            settings_configmap=env.get("GITLAB_STS_SETTINGS_CONFIGMAP", "").strip() or d.settings_configmap,
            bindings_configmap=env.get("GITLAB_STS_BINDINGS_CONFIGMAP", "").strip() or d.bindings_configmap,
            keys_secret=env.get("GITLAB_STS_KEYS_SECRET", "").strip() or d.keys_secret,
            pinned_configmap=env.get("GITLAB_STS_PINNED_JWKS_CONFIGMAP", "").strip() or d.pinned_configmap,
            pod_name=env.get("GITLAB_STS_POD_NAME", "").strip() or socket.gethostname(),
            lease_prefix=env.get("GITLAB_STS_LEASE_PREFIX", "").strip() or d.lease_prefix,
            lease_seconds=int(env.get("GITLAB_STS_LEASE_SECONDS", "").strip() or d.lease_seconds),
            renew_seconds=float(env.get("GITLAB_STS_LEASE_RENEW_SECONDS", "").strip() or d.renew_seconds),
        )

    def objects(self) -> dict[str, tuple[str, str]]:
        """input -> (plural, object name)."""
        return {SETTINGS: ("configmaps", self.settings_configmap), BINDINGS: ("configmaps", self.bindings_configmap),
                KEYS: ("secrets", self.keys_secret), PINNED: ("configmaps", self.pinned_configmap)}

    @property
    def lease_name(self) -> str:
        """This pod's Lease."""
        return f"{self.lease_prefix}-{self.pod_name}"[:253]


Files = dict[str, bytes]


def files_of(obj: Mapping[str, Any] | None, plural: str) -> Files:
    """The files a ConfigMap or Secret volume would hold (data and binaryData keys)."""
    if not obj:
        return {}
    out: Files = {}
    for name, value in (obj.get("data") or {}).items():
        out[str(name)] = base64.b64decode(value) if plural == "secrets" else str(value).encode()
    for name, value in (obj.get("binaryData") or {}).items():
        out[str(name)] = base64.b64decode(value)
    return out


def digest_of(files: Files) -> str:
    """A content digest of a set of files (names and bytes)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


class LocalCopy:
    """The folder the workers read: root/settings/settings.yaml, root/bindings, root/keys, root/pinned."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, volume: ConfigPaths) -> ConfigPaths:
        """The ConfigPaths the workers load from."""
        return replace(volume, settings=self.root / SETTINGS / SETTINGS_KEY, bindings=self.root / BINDINGS,
                       keys=self.root / KEYS, pinned=self.root / PINNED)

    def write(self, name: str, files: Files) -> None:
        """Replace one input's files: new ones first (by rename), then the ones no longer there."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        wanted = {SETTINGS_KEY: files.get(SETTINGS_KEY, b"")} if name == SETTINGS and SETTINGS_KEY in files \
            else dict(files)
        for file, data in wanted.items():
            if "/" in file or file.startswith("."):
                continue  # not a name a volume could hold
            write_atomically(directory / file, data, scratch=self.root / ".scratch")
        for entry in os.scandir(directory):
            if entry.name not in wanted and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def seed(self, volume: ConfigPaths, marker: str) -> bool:
        """Copy the volumes in once per server start (marker: the gunicorn master's pid); True if copied."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(self.root / ".seed.lock", blocking=True):
            stamp = self.root / ".seeded"
            if stamp.exists() and stamp.read_text() == marker:
                return False
            for name in INPUTS:
                self.write(name, read_volume(volume, name))
            write_atomically(self.root / SOURCES_FILE, json.dumps(
                {n: {"source": "volume", "sha256": digest_of(read_volume(volume, n)), "resourceVersion": ""}
                 for n in INPUTS}).encode(), scratch=self.root / ".scratch")
            stamp.write_text(marker)
            return True

    def sources(self) -> dict[str, Any]:
        """Where each input's current files came from (written by the follower)."""
        try:
            doc = json.loads((self.root / SOURCES_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def report_served(self, digest: str) -> None:
        """This worker serves the bindings document with this digest."""
        write_atomically(self.root / ".served" / str(os.getpid()), digest.encode(), scratch=self.root / ".scratch")

    def served(self) -> list[str]:
        """The digests the live workers serve (a dead worker's report is removed)."""
        out = set()
        directory = self.root / ".served"
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.isdigit() or not _alive(int(entry.name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            with contextlib.suppress(OSError):
                out.add(Path(entry.path).read_text().strip())
        return sorted(d for d in out if d)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def read_volume(volume: ConfigPaths, name: str) -> Files:
    """The files of one mounted input (missing: none), as the kubelet's volume shows them."""
    if name == SETTINGS:
        try:
            return {SETTINGS_KEY: volume.settings.read_bytes()}
        except OSError:
            return {}
    directory = {BINDINGS: volume.bindings, KEYS: volume.keys, PINNED: volume.pinned}[name]
    if directory is None:
        return {}
    out: Files = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    for entry in entries:
        if entry.name.startswith("."):
            continue  # ..data and the timestamped folders of ConfigMap volumes
        try:
            if entry.is_file():
                out[entry.name] = Path(entry.path).read_bytes()
        except OSError:
            continue
    return out


def _volume_print(volume: ConfigPaths, name: str) -> tuple[object, ...]:
    path = {SETTINGS: volume.settings, BINDINGS: volume.bindings, KEYS: volume.keys, PINNED: volume.pinned}[name]
    return () if path is None else fingerprint(path)


class Follower:
    """Decides, per input, whether the API copy or the volume copy goes into the local folder."""

    def __init__(self, config: FollowConfig, local: LocalCopy, volume: ConfigPaths,
                 api: KubeApi | None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.local = local
        self.volume = volume
        self.api = api
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: dict[str, deque[str]] = {n: deque(maxlen=SEEN_LIMIT) for n in INPUTS}
        self._synced: dict[str, bool] = dict.fromkeys(INPUTS, False)
        self._volume_prints: dict[str, tuple[object, ...]] = {}
        self._volume_digests: dict[str, str] = {}
        previous = local.sources()
        self._current: dict[str, dict[str, str]] = {
            n: dict(previous.get(n) or {"source": "volume", "sha256": "", "resourceVersion": ""}) for n in INPUTS}
        for n in INPUTS:
            # What the volume shows when following starts is not newer than what the API holds.
            self._volume_prints[n] = _volume_print(volume, n)
            digest = digest_of(read_volume(volume, n))
            self._volume_digests[n] = digest
            self._seen[n].append(digest)
        self.lease_error = ""
        self._reported: tuple[list[str], float] = ([], 0.0)
        self.threads: list[threading.Thread] = []

    # ---- decisions (called from the watch threads and the poll loop)

    def api_copy(self, name: str, files: Files | None, resource_version: str) -> None:
        """The API delivered this content (None: the object does not exist): it wins."""
        if files is None:
            if name in (SETTINGS, KEYS):
                # Required inputs: a missing object is a setup problem, not "no settings"; the volume stays the
                # source (and ConfigState keeps the last good version).
                self.api_lost(name)
                return
            files = {}
        digest = digest_of(files)
        with self._lock:
            self._seen[name].append(digest)
            self._synced[name] = True
            if self._current[name].get("sha256") == digest and self._current[name].get("source") == "api":
                return  # the same content again (a re-list, a metadata-only change): the version first seen stays
            # Sources first: a worker that loads the new files then reads where they came from.
            self._current[name] = {"source": "api", "sha256": digest, "resourceVersion": resource_version}
            self._save_sources()
            self.local.write(name, files)
        log.info("config object delivered by the API", extra={"event": "config_follow", "file": name,
                                                             "resource_version": resource_version})

    def api_lost(self, name: str | None = None) -> None:
        """A watch (or every watch) is not synced with the API server now."""
        with self._lock:
            changed = False
            for n in (INPUTS if name is None else (name,)):
                changed = changed or self._synced[n]
                self._synced[n] = False
            if changed:
                self._save_sources()

    def synced(self, name: str) -> bool:
        """Whether the input's watch is synced."""
        return self._synced[name]

    def check_volume(self) -> None:
        """Take volume content the API never delivered while its watch is not synced (the kubelet moved on)."""
        for name in INPUTS:
            fp = _volume_print(self.volume, name)
            if fp == self._volume_prints.get(name):
                continue
            self._volume_prints[name] = fp
            files = read_volume(self.volume, name)
            digest = digest_of(files)
            if digest == self._volume_digests.get(name):
                continue
            self._volume_digests[name] = digest
            with self._lock:
                if self._synced[name] or digest in self._seen[name]:
                    continue
                self._seen[name].append(digest)
                self._current[name] = {"source": "volume", "sha256": digest, "resourceVersion": ""}
                self._save_sources()
                self.local.write(name, files)
            log.warning("the API server is not reachable: taking the newer copy from the mounted volume",
                        extra={"event": "config_follow", "file": name})

    def _save_sources(self) -> None:
        doc = {n: {**self._current[n], "synced": self._synced[n]} for n in INPUTS}
        write_atomically(self.local.root / SOURCES_FILE, json.dumps(doc).encode(), scratch=self.local.root / ".scratch")

    # ---- threads

    def start(self) -> None:
        """One watch thread per object, and the loop that checks the volumes and renews the Lease."""
        if self.api is not None:
            for name in INPUTS:
                t = threading.Thread(target=self._watch_loop, args=(name,), name=f"gitlab-sts-follow-{name}",
                                     daemon=True)
                t.start()
                self.threads.append(t)
        t = threading.Thread(target=self._poll_loop, name="gitlab-sts-follow-poll", daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        """Stop the loops (tests); watches end at their next event or timeout."""
        self._stop.set()

    def _watch_loop(self, name: str) -> None:
        assert self.api is not None
        plural, obj_name = self.config.objects()[name]
        path = object_path("v1", plural, self.config.namespace)
        selector = {"fieldSelector": f"metadata.name={obj_name}"}
        delay = 0.2
        while not self._stop.is_set():
            try:
                listed = self.api.request("GET", path, query=selector)
                rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                item = next((i for i in listed.get("items") or () if (i.get("metadata") or {}).get("name") == obj_name),
                            None)
                item_rv = str(((item or {}).get("metadata") or {}).get("resourceVersion") or rv)
                self.api_copy(name, files_of(item, plural) if item else None, item_rv)
                delay = 0.2
                while not self._stop.is_set():
                    query = {**selector, "resourceVersion": rv, "allowWatchBookmarks": "true",
                             "timeoutSeconds": str(WATCH_SECONDS)}
                    expired = False
                    for event in self.api.watch(path, query, read_timeout=WATCH_SECONDS + 30):
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                expired = True  # too old a resourceVersion: list again
                                break
                            raise KubeError(int(obj.get("code") or 0), str(obj.get("message") or "watch error"))
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if (obj.get("metadata") or {}).get("name") != obj_name or kind == "BOOKMARK":
                            continue
                        self.api_copy(name, files_of(obj, plural) if kind != "DELETED" else None, rv)
                    if expired:
                        break
            except (KubeError, OSError, ValueError) as exc:
                self.api_lost(name)
                log.warning("cannot follow a config object through the API; the mounted volume is the fallback",
                            extra={"event": "config_follow", "file": name, "error": str(exc)})
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _poll_loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.check_volume()
                self.renew_if_due()
            except Exception:  # never let the loop die; the next round tries again
                log.exception("config follower loop failed", extra={"event": "config_follow"})

    def renew_if_due(self) -> None:
        """Renew the Lease when the served digests changed or the renewal period passed."""
        if self.api is None:
            return
        served = self.local.served()
        last, at = self._reported
        now = self.clock()
        if served == last and now - at < self.config.renew_seconds:
            return
        try:
            self.renew(served)
        except KubeError as exc:
            self.lease_error = str(exc)
            if exc.status == 0:
                self.api_lost()  # no answer at all: the watches are probably stuck too
            log.warning("cannot renew the exchange Lease", extra={"event": "config_follow", "error": str(exc)})
            self._reported = (last, now)  # retry after the renewal period, or sooner when the digests change
            return
        self.lease_error = ""
        self._reported = (served, now)

    def renew(self, served: list[str]) -> None:
        """Create or update this pod's Lease with the served digests."""
        assert self.api is not None
        cfg = self.config
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        meta = {"labels": LEASE_LABELS, "annotations": {SERVED_ANNOTATION: ",".join(served)}}
        spec = {"holderIdentity": cfg.pod_name, "leaseDurationSeconds": cfg.lease_seconds, "renewTime": stamp}
        path = object_path("coordination.k8s.io/v1", "leases", cfg.namespace, cfg.lease_name)
        try:
            self.api.request("PATCH", path, body={"metadata": meta, "spec": spec},
                             content_type="application/merge-patch+json")
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.lease_name, "namespace": cfg.namespace, **meta},
                    "spec": {**spec, "acquireTime": stamp}}
            self.api.request("POST", object_path("coordination.k8s.io/v1", "leases", cfg.namespace), body=body)


class FollowerHost:
    """Runs in every worker: the one that takes the lock file follows; the others wait to take over."""

    def __init__(self, config: FollowConfig, local: LocalCopy, volume: ConfigPaths,
                 api_factory: Callable[[], KubeApi] | None = None) -> None:
        self.config = config
        self.local = local
        self.volume = volume
        self.api_factory = api_factory or (lambda: KubeApi(KubeAccess.from_env()))
        self.follower: Follower | None = None
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        """Try the lock every second in a daemon thread; follow once it is ours."""
        thread = threading.Thread(target=self._run, name="gitlab-sts-follow-lock", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop (tests)."""
        self._stop.set()
        if self.follower is not None:
            self.follower.stop()

    def _run(self) -> None:
        lock_path = self.local.root / ".follower.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        while not self._stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._stop.wait(1.0)
                continue
            break
        else:
            os.close(fd)
            return
        # The lock stays held (fd open) for this process's lifetime: the kernel releases it when we exit.
        api: KubeApi | None
        try:
            api = self.api_factory()
        except (KubeError, OSError, ValueError) as exc:
            api = None
            log.error("cannot reach the Kubernetes API; serving from the mounted volumes only",
                      extra={"event": "config_follow", "error": str(exc)})
        self.follower = Follower(self.config, self.local, self.volume, api)
        self.follower.start()
        log.info("following the config objects through the API", extra={"event": "config_follow"})
