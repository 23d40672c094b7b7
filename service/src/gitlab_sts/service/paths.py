"""Where the service finds its inputs (settings, bindings, keys, refreshed pinned key sets)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_DIR = "/etc/gitlab-sts"


@dataclass(frozen=True)
class ConfigPaths:
    """The settings file, bindings, keys and pinned key set folders of one service."""

    settings: Path
    bindings: Path
    keys: Path
    # True when the keys were generated for development by `gitlab-sts serve` without --keys.
    development_keys: bool = False
    # Refreshed pinned GitLab key sets written by the operator (core.pinnedjwks); None: not read.
    pinned: Path | None = None

    @classmethod
    def from_env(cls) -> ConfigPaths:
        """Read GITLAB_STS_CONFIG_DIR and the per-input overrides."""
        base = Path(os.environ.get("GITLAB_STS_CONFIG_DIR", DEFAULT_CONFIG_DIR))
        return cls(
            settings=Path(os.environ.get("GITLAB_STS_SETTINGS", base / "settings.yaml")),
            bindings=Path(os.environ.get("GITLAB_STS_BINDINGS_DIR", base / "bindings")),
            keys=Path(os.environ.get("GITLAB_STS_KEYS_DIR", base / "keys")),
            development_keys=os.environ.get("GITLAB_STS_DEVELOPMENT_KEYS") == "1",
            pinned=Path(os.environ.get("GITLAB_STS_PINNED_DIR", base / "pinned")),
        )


def fingerprint(path: Path) -> tuple[object, ...]:
    """A cheap change detector: (inode, size, mtime) of a file or of every entry of a folder."""
    try:
        if path.is_dir():
            # ConfigMap/Secret volumes swap a `..data` symlink; resolving entries catches that.
            out: list[object] = []
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.name.startswith("..") and entry.name != "..data":
                    continue
                try:
                    st = os.stat(entry.path)
                except OSError:  # removed (or made unreadable) between the listing and the stat
                    continue
                out.append((entry.name, os.path.realpath(entry.path), st.st_ino, st.st_size, st.st_mtime_ns))
            return tuple(out)
        st = path.stat()
        return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:  # missing or unreadable: the load that follows says which
        return ("missing",)
