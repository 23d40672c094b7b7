"""Prometheus metrics (multiprocess-safe under gunicorn when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

EXCHANGES = Counter(
    "gitlab_sts_exchanges_total", "Exchange decisions by endpoint, result and reason.",
    ["endpoint", "result", "reason"],
)
LATENCY = Histogram(
    "gitlab_sts_exchange_seconds", "Time to answer an exchange request.", ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
JWKS_FETCHES = Counter(
    "gitlab_sts_jwks_fetches_total", "Fetches of GitLab key sets by issuer and result.", ["issuer", "result"],
)
CONFIG_RELOADS = Counter(
    "gitlab_sts_config_reloads_total", "Config file reloads by file and result.", ["file", "result"],
)
CONFIG_OK = Gauge(
    "gitlab_sts_config_loaded", "1 when the last load of the file succeeded, 0 when the last good one is kept.",
    ["file"], multiprocess_mode="livemin",
)
BINDINGS = Gauge("gitlab_sts_bindings", "Bindings loaded.", multiprocess_mode="livemax")


class LazyGauge:
    """A label-less Gauge created at its first set().

    In multiprocess mode a Gauge writes 0 to this process's file when it is created (at import). A worker
    still loading its config would then report 0 seconds remaining, and `livemin` across workers would pick it:
    a "key about to retire" alert at every pod start. Created at the first set, a worker reports nothing until
    it knows the value.
    """

    def __init__(self, name: str, documentation: str, multiprocess_mode: str) -> None:
        self._args = (name, documentation)
        self._mode = multiprocess_mode
        self._gauge: Gauge | None = None

    def set(self, value: float) -> None:
        """Set the value (creating the gauge the first time)."""
        if self._gauge is None:
            self._gauge = Gauge(*self._args, multiprocess_mode=self._mode)  # type: ignore[arg-type]
        self._gauge.set(value)


KEY_AGE = LazyGauge(
    "gitlab_sts_signing_key_age_seconds", "Seconds since the current signing key became active.", "livemax",
)
KEY_REMAINING = LazyGauge(
    "gitlab_sts_signing_key_remaining_seconds", "Seconds until the current signing key retires.", "livemin",
)
PINNED_JWKS_AGE = Gauge(
    "gitlab_sts_pinned_jwks_age_seconds", "Seconds since a pinned GitLab key set was copied (settings pinnedAt).",
    ["issuer"], multiprocess_mode="livemax",
)
REPLAY_STORE_ERRORS = Counter(
    "gitlab_sts_replay_store_errors", "Checks of single use that failed closed because the shared store failed.",
)
SERVED = Gauge(
    "gitlab_sts_served_info",
    "1 for the bindings document a worker serves (digest; where it came from: api or volume; the ConfigMap's "
    "resourceVersion when from the API), 0 for documents it served before.",
    ["digest", "source", "resource_version"], multiprocess_mode="livemax",
)
STS_CALLS = Counter(
    "gitlab_sts_sts_calls_total", "AssumeRoleWithWebIdentity calls by result code.", ["result"],
)


def render() -> tuple[bytes, str]:
    """Render every worker's metrics when in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
