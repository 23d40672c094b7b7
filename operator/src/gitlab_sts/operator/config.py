"""Operator configuration from the environment (the chart sets these variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    """Where the operator's objects live and how often it acts."""

    namespace: str = "gitlab-sts"
    watch_namespaces: tuple[str, ...] = ()  # empty: every namespace
    bindings_configmap: str = "gitlab-sts-bindings"
    keys_secret: str = "gitlab-sts-keys"  # noqa: S105 - a Secret name, not a secret
    # Publishing status (publish.json), for `kubectl get configmap gitlab-sts-status -o yaml`.
    status_configmap: str = "gitlab-sts-status"
    # Refreshed copies of pinned GitLab key sets (settings gitlab[].pinnedJwksSource), mounted by the service.
    pinned_jwks_configmap: str = "gitlab-sts-pinned-jwks"
    config_dir: Path = Path("/etc/gitlab-sts")
    # Coalesce bursts of binding changes into one ConfigMap write. Part of apply -> usable (issue #13: 2 s p99),
    # so short; a write of 10,000 bindings takes ~0.5 s, during which further changes coalesce anyway.
    debounce_seconds: float = 0.2
    # Periodic mend: a full listing compares every binding's status with what it should be.
    resync_seconds: float = 300.0
    # The API server ends a watch stream after this long; it is resumed from the last resourceVersion.
    watch_timeout_seconds: int = 300
    key_check_seconds: float = 300.0
    pinned_jwks_seconds: float = 600.0
    metrics_port: int = 9090
    # The name prefix of the exchange pods' Leases (core.served); empty: no Served condition.
    exchange_lease_prefix: str = ""
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"

    @property
    def settings_file(self) -> Path:
        """settings.yaml in the config directory (mounted from the settings ConfigMap)."""
        return self.config_dir / "settings.yaml"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read GITLAB_STS_* variables (defaults as in the chart)."""
        env = os.environ if env is None else env
        default = cls()
        watch = tuple(sorted({n.strip() for n in env.get("GITLAB_STS_WATCH_NAMESPACES", "").split(",") if n.strip()}))
        port_raw = env.get("GITLAB_STS_OPERATOR_METRICS_PORT", "").strip()
        return cls(
            namespace=env.get("GITLAB_STS_NAMESPACE", "").strip() or default.namespace,
            watch_namespaces=watch,
            bindings_configmap=env.get("GITLAB_STS_BINDINGS_CONFIGMAP", "").strip() or default.bindings_configmap,
            keys_secret=env.get("GITLAB_STS_KEYS_SECRET", "").strip() or default.keys_secret,
            status_configmap=env.get("GITLAB_STS_STATUS_CONFIGMAP", "").strip() or default.status_configmap,
            pinned_jwks_configmap=env.get("GITLAB_STS_PINNED_JWKS_CONFIGMAP", "").strip()
            or default.pinned_jwks_configmap,
            config_dir=Path(env.get("GITLAB_STS_CONFIG_DIR", "").strip() or default.config_dir),
            debounce_seconds=_float(env, "GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS", default.debounce_seconds),
            resync_seconds=_float(env, "GITLAB_STS_OPERATOR_RESYNC_SECONDS", default.resync_seconds),
            key_check_seconds=_float(env, "GITLAB_STS_OPERATOR_KEY_CHECK_SECONDS", default.key_check_seconds),
            pinned_jwks_seconds=_float(env, "GITLAB_STS_OPERATOR_PINNED_JWKS_SECONDS", default.pinned_jwks_seconds),
            metrics_port=int(port_raw) if port_raw else default.metrics_port,
            liveness_endpoint=env.get("GITLAB_STS_OPERATOR_LIVENESS", "").strip() or default.liveness_endpoint,
            exchange_lease_prefix=env.get("GITLAB_STS_EXCHANGE_LEASE_PREFIX", "").strip(),
        )
