"""Hot-reloaded configuration: the last good settings, bindings, keys and pinned key sets, swapped atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gitlab_sts.core import admission
from gitlab_sts.core.bindingdoc import (
    DOC_FILE,
    LoadedBindings,
    Rejected,
    load_bindings_dir,
    parse_document,
    render_document,
)
from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import KEYSET_FILE, KeyRing, parse_keyring
from gitlab_sts.core.pinnedjwks import PinnedCopy, apply_copies, file_name, parse_copy
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.service import gcpolicy, metrics
from gitlab_sts.service.paths import ConfigPaths, fingerprint
from gitlab_sts.service.preflight import read_error

log = logging.getLogger("gitlab_sts.service")

# How often the watcher looks at file fingerprints: a few stat calls, cheap enough to do often, and what
# bounds the delay between the API follower writing a copy and every worker serving it (service/follow.py).
CHECK_INTERVAL = 0.2


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the configuration, used for a whole request."""

    settings: Settings | None
    index: BindingIndex | None
    rejected: tuple[Rejected, ...]
    keys: KeyRing | None
    errors: dict[str, str] = field(default_factory=dict)
    bindings_digest: str = ""
    # Issuers whose pinned key set in `settings` is the operator's refreshed copy (core.pinnedjwks).
    pinned_from_operator: frozenset[str] = frozenset()


class ConfigState:
    """Loads the inputs and reloads whichever changed, keeping the last good version."""

    def __init__(self, paths: ConfigPaths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._prints: dict[str, tuple[object, ...]] = {}
        self._settings: Settings | None = None
        self._loaded: LoadedBindings | None = None
        self._index: BindingIndex | None = None
        self._keys: KeyRing | None = None
        self._rejected: tuple[Rejected, ...] = ()
        # Pinned key set copies by file name, and settings with the newer ones applied.
        self._pinned: dict[str, PinnedCopy] = {}
        self._effective: tuple[Settings | None, frozenset[str]] = (None, frozenset())
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._last_good = LastGood.for_paths(paths)
        # Called with each new snapshot whose bindings digest changed (reports what this worker serves).
        self.on_bindings: Callable[[Snapshot], None] | None = None
        self.snapshot = Snapshot(None, None, (), None, {"settings": "not loaded yet"})
        self.reload(force=True)

    def current(self) -> Snapshot:
        """The snapshot to use now (swapped atomically by reloads, never half-updated)."""
        return self.snapshot

    def start_watcher(self, interval: float = CHECK_INTERVAL,
                      tick: Callable[[], None] | None = None) -> threading.Thread:
        """Poll the files in a daemon thread (a greenlet under gevent) so that no request ever pays for a reload.

        tick runs after each poll: the service refreshes its time-driven gauges there, so that every worker's
        values are current whichever worker Prometheus scrapes.
        """
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reload(force=False)
                    if tick is not None:
                        tick()
                except Exception:  # never let the watcher die; the next poll tries again
                    log.exception("config watcher failed", extra={"event": "config_reload"})
        thread = threading.Thread(target=loop, name="gitlab-sts-config-watcher", daemon=True)
        thread.start()
        return thread

    def stop_watcher(self) -> None:
        """Stop the watcher thread (tests)."""
        self._stop.set()

    def reload(self, force: bool = True) -> Snapshot:
        """Reload now (blocking); force re-reads every file."""
        with self._lock:
            before = self.snapshot.bindings_digest
            loaded = self._reload_locked(force=force)
            if self.on_bindings is not None and (force or self.snapshot.bindings_digest != before):
                try:
                    self.on_bindings(self.snapshot)
                except OSError as exc:
                    log.warning("cannot report the served bindings", extra={"event": "config_reload",
                                                                            "error": exc.strerror})
            if loaded:
                # When enabled (gunicorn workers), freeze what was loaded so that full garbage collections
                # do not walk 10,000 bindings while request threads wait (service/gcpolicy.py).
                gcpolicy.after_reload()
        return self.snapshot

    def _changed(self, name: str, path: Path, force: bool) -> bool:
        fp = fingerprint(path)
        if not force and self._prints.get(name) == fp:
            return False
        self._prints[name] = fp
        return True

    def _attempt(self, name: str, load: Callable[[], None], fallback: Callable[[], bool]) -> None:
        try:
            load()
        except (ConfigError, OSError) as exc:
            message = str(exc) if isinstance(exc, ConfigError) else read_error(self._path_of(name), exc)
            self._errors[name] = message
            metrics.CONFIG_RELOADS.labels(file=name, result="error").inc()
            metrics.CONFIG_OK.labels(file=name).set(0)
            kept = "keeping the last good version" if self._has(name) else "no good version loaded yet"
            log.error(f"config reload failed, {kept}",
                      extra={"event": "config_reload", "file": name, "error": message})
            if not self._has(name):
                # A worker that starts (or restarts) while a file is broken has no last good version
                # in memory: take the copy another worker saved.
                try:
                    if not fallback():
                        return  # nothing saved: say nothing about a copy that does not exist
                except (ConfigError, OSError, ValueError):
                    return
                log.warning("using the last good copy saved by an earlier load",
                            extra={"event": "config_reload", "file": name})
        else:
            self._errors.pop(name, None)
            metrics.CONFIG_RELOADS.labels(file=name, result="ok").inc()
            metrics.CONFIG_OK.labels(file=name).set(1)

    def _path_of(self, name: str) -> Path:
        return {"settings": self.paths.settings, "bindings": self.paths.bindings,
                "keys": self.paths.keys / KEYSET_FILE}[name]

    def _has(self, name: str) -> bool:
        return {"settings": self._settings, "bindings": self._index, "keys": self._keys}[name] is not None

    def _reload_locked(self, force: bool) -> bool:
        """Reload what changed; returns whether any file was read."""
        settings_changed = self._changed("settings", self.paths.settings, force)
        if settings_changed:
            self._attempt("settings", self._load_settings, self._fallback_settings)
        bindings_changed = self._changed("bindings", self.paths.bindings, force)
        if bindings_changed:
            self._attempt("bindings", self._load_bindings, self._fallback_bindings)
        elif settings_changed and self._loaded:
            # Only the index depends on settings (default and trusted issuers): re-index what is loaded.
            self._adopt_bindings(self._loaded)
        keys_changed = self._changed("keys", self.paths.keys, force)
        if keys_changed:
            self._attempt("keys", self._load_keys, self._fallback_keys)
        pinned_changed = self.paths.pinned is not None and self._changed("pinned", self.paths.pinned, force)
        if pinned_changed:
            self._load_pinned()
        if settings_changed or pinned_changed:
            copies = {c.issuer: c for c in self._pinned.values()}
            self._effective = apply_copies(self._settings, copies) if self._settings else (None, frozenset())
        self.snapshot = Snapshot(
            settings=self._effective[0], pinned_from_operator=self._effective[1], index=self._index,
            rejected=self._rejected, keys=self._keys,
            errors=dict(self._errors), bindings_digest=self._loaded.digest if self._loaded else "",
        )
        return settings_changed or bindings_changed or keys_changed or pinned_changed

    def _load_settings(self) -> None:
        raw = self.paths.settings.read_bytes()
        self._settings = parse_settings(raw.decode(errors="replace"), source=self.paths.settings.name)
        self._last_good.save("settings.yaml", raw)

    def _fallback_settings(self) -> bool:
        raw = self._last_good.load("settings.yaml")
        if raw is None:
            return False
        self._settings = parse_settings(raw.decode(), source="last good settings.yaml")
        return True

    def _load_bindings(self) -> None:
        # Entries unchanged since the last load keep their compiled bindings: only edits are compiled.
        loaded = load_bindings_dir(self.paths.bindings, previous=self._loaded)
        self._adopt_bindings(loaded)
        # The operator's document is saved as read; a manifests folder is rendered into one.
        self._last_good.save(DOC_FILE, loaded.raw or render_document(loaded.bindings)[0])

    def _fallback_bindings(self) -> bool:
        raw = self._last_good.load(DOC_FILE)
        if raw is None:
            return False
        self._adopt_bindings(parse_document(raw, "last good bindings"))
        return True

    def _adopt_bindings(self, loaded: LoadedBindings) -> None:
        default_issuer = None
        if self._settings is not None and len(self._settings.gitlab) == 1:
            default_issuer = self._settings.gitlab[0].issuer
        index = BindingIndex(loaded.bindings, default_issuer=default_issuer)
        unusable: list[Rejected] = []
        if self._settings is not None:
            # The operator's rules (core.admission): a binding the settings refuse is not indexed at all. The
            # issuer rule covers the bindings without an issuer when the settings trust several instances.
            rules = admission.for_settings(self._settings)
            refused = [(b, r) for b in index.bindings if (r := rules.check_binding(b)) is not None]
            if refused:
                unusable = [Rejected(b.key, r.message) for b, r in refused]
                drop = {id(b) for b, _ in refused}
                index = BindingIndex([b for b in index.bindings if id(b) not in drop], default_issuer=default_issuer)
        else:
            unusable = [Rejected(b.key, "spec.issuer: required when settings trust several GitLab instances")
                        for b in index.unresolved]
        self._loaded, self._index = loaded, index
        self._rejected = loaded.rejected + tuple(unusable)
        for bad in self._rejected:
            log.warning("binding rejected", extra={"event": "binding_rejected", "binding": bad.key,
                                                   "error": bad.error})
        metrics.BINDINGS.set(len(index))

    def _load_keys(self) -> None:
        raw = (self.paths.keys / KEYSET_FILE).read_bytes()
        self._keys = parse_keyring(raw.decode(errors="replace"), source=KEYSET_FILE)
        self._last_good.save(KEYSET_FILE, raw, secret=True)

    def _fallback_keys(self) -> bool:
        raw = self._last_good.load(KEYSET_FILE)
        if raw is None:
            return False
        self._keys = parse_keyring(raw.decode(), source="last good keyset.json")
        return True


    def _load_pinned(self) -> None:
        """Read every copy in the pinned folder; a file that fails keeps its last good copy (memory, then disk)."""
        assert self.paths.pinned is not None
        directory = self.paths.pinned
        try:
            # ConfigMap volumes hold `..data` and timestamped folders next to the key symlinks: skip dot entries.
            names = sorted(e.name for e in os.scandir(directory) if not e.name.startswith(".") and e.is_file())
        except FileNotFoundError:
            names = []  # no copies (yet): the settings copies apply
        except OSError as exc:
            self._pinned_failed(f"cannot read {directory}: {exc.strerror}")
            return
        loaded: dict[str, PinnedCopy] = {}
        problems = []
        for name in names:
            try:
                raw = (directory / name).read_bytes()
                copy = parse_copy(raw.decode(errors="replace"), source=f"pinned/{name}")
                if name != file_name(copy.issuer):
                    raise ConfigError(f"pinned/{name}: holds the key set of {copy.issuer}, whose file is "
                                      f"{file_name(copy.issuer)}")
            except (ConfigError, OSError) as exc:
                problems.append(str(exc) if isinstance(exc, ConfigError) else f"pinned/{name}: cannot read")
                previous = self._pinned.get(name) or self._last_good_pinned(name)
                if previous is not None:
                    loaded[name] = previous
                continue
            loaded[name] = copy
            self._last_good.save("pinned-" + name, raw)
        self._pinned = loaded
        if problems:
            self._pinned_failed("; ".join(problems))
        else:
            self._errors.pop("pinned", None)
            metrics.CONFIG_RELOADS.labels(file="pinned", result="ok").inc()
            metrics.CONFIG_OK.labels(file="pinned").set(1)

    def _pinned_failed(self, message: str) -> None:
        self._errors["pinned"] = message
        metrics.CONFIG_RELOADS.labels(file="pinned", result="error").inc()
        metrics.CONFIG_OK.labels(file="pinned").set(0)
        log.error("pinned key set reload failed, keeping the last good copies",
                  extra={"event": "config_reload", "file": "pinned", "error": message})

    def _last_good_pinned(self, name: str) -> PinnedCopy | None:
        raw = self._last_good.load("pinned-" + name)
        try:
            return parse_copy(raw.decode(), source=f"last good pinned/{name}") if raw is not None else None
        except (ConfigError, ValueError):
            return None


class LastGood:
    """Copies of the last files that loaded, shared by the workers of one service (private, 0600).

    The signing key set is a secret: it is copied only into a configured state directory
    ($GITLAB_STS_STATE_DIR, an emptyDir in the chart), never into a folder the service picked in the temp dir.
    """

    def __init__(self, directory: Path, *, keeps_secrets: bool = True) -> None:
        self.directory = directory
        self.keeps_secrets = keeps_secrets

    @classmethod
    def for_paths(cls, paths: ConfigPaths) -> LastGood:
        """$GITLAB_STS_STATE_DIR, else a folder in the temp dir keyed by the config paths (no secrets there)."""
        configured = os.environ.get("GITLAB_STS_STATE_DIR")
        if configured:
            return cls(Path(configured))
        key = hashlib.sha256(f"{paths.settings}|{paths.bindings}|{paths.keys}".encode()).hexdigest()[:16]
        return cls(Path(tempfile.gettempdir()) / f"gitlab-sts-last-good-{os.getuid()}-{key}", keeps_secrets=False)

    def save(self, name: str, data: bytes, *, secret: bool = False) -> None:
        """Write atomically; a failure to save is logged, never fatal. A secret goes only to a configured folder."""
        if secret and not self.keeps_secrets:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.directory / name)
        except OSError as exc:
            log.warning("cannot save the last good copy", extra={"event": "config_reload", "file": name,
                                                                  "error": exc.strerror})

    def load(self, name: str) -> bytes | None:
        """The saved copy, if any."""
        try:
            return (self.directory / name).read_bytes()
        except OSError:
            return None
