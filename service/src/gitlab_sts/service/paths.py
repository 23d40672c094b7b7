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
