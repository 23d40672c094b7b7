"""Prometheus metrics of the operator (prefix gitlab_sts_operator_)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gitlab_sts.core.keys import KeyRing

REGISTRY = CollectorRegistry(auto_describe=True)
_P = "gitlab_sts_operator_"

BINDINGS = Gauge(_P + "bindings", "Watched bindings by state", ["state"], registry=REGISTRY)
EVENTS = Counter(_P + "binding_events_total", "Binding watch events handled", ["type"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(_P + "reconcile_seconds", "Time to handle one binding event", registry=REGISTRY,
                              buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
STATUS_PATCHES = Counter(_P + "status_patches_total", "Binding status patches", ["result"], registry=REGISTRY)
CONFIG_WRITES = Counter(_P + "config_writes_total", "Bindings ConfigMap writes", ["result"], registry=REGISTRY)
CONFIG_WRITE_SECONDS = Histogram(_P + "config_write_seconds", "Time to render and write the bindings ConfigMap",
                                 registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CONFIG_BYTES = Gauge(_P + "config_bytes", "Size of the bindings document as stored", registry=REGISTRY)
CONFIG_BINDINGS = Gauge(_P + "config_bindings", "Bindings in the last written document", registry=REGISTRY)
KEY_AGE = Gauge(_P + "key_age_seconds", "Age of each signing key since createdAt", ["kid", "state"],
                registry=REGISTRY)
KEYS = Gauge(_P + "keys", "Keys in the key set", registry=REGISTRY)
KEYSET_CORRUPTED = Gauge(_P + "keyset_corrupted", "1 while the keys Secret cannot be parsed (rotation stops)",
                         registry=REGISTRY)
KEY_ROTATIONS = Counter(_P + "key_checks_total", "Key set checks by outcome", ["result"], registry=REGISTRY)
LAST_KEY_CHECK = Gauge(_P + "last_key_check_timestamp_seconds", "When the key set was last checked",
                       registry=REGISTRY)

PUBLISH_LAST_SUCCESS = Gauge(_P + "publish_last_success_timestamp_seconds",
                             "When the issuer documents were last uploaded to S3 successfully", registry=REGISTRY)
PUBLISH_LAST_VERIFIED = Gauge(_P + "publish_last_verified_timestamp_seconds",
                              "When the JWKS read back from S3 last covered every key that must be published",
                              registry=REGISTRY)
PUBLISH_FAILURES = Counter(_P + "publish_failures_total", "Failed S3 uploads or read-backs", ["stage"],
                           registry=REGISTRY)
PUBLISH_MATCHES = Gauge(_P + "publish_jwks_matches", "1 when the JWKS in S3 holds every key that must be published",
                        registry=REGISTRY)
PUBLISH_HELD_BACK = Gauge(_P + "publish_keys_held_back",
                          "Keys whose activation waits for their publication (lead time after the first upload)",
                          registry=REGISTRY)

PINNED_REFRESHES = Counter(_P + "pinned_jwks_refreshes_total",
                           "Refreshes of pinned GitLab key sets from pinnedJwksSource by issuer and result",
                           ["issuer", "result"], registry=REGISTRY)
PINNED_FAILURES = Gauge(_P + "pinned_jwks_refresh_failures",
                        "Consecutive failed refreshes of a pinned key set (0 after a success)", ["issuer"],
                        registry=REGISTRY)
PINNED_FETCHED_AT = Gauge(_P + "pinned_jwks_fetched_timestamp_seconds",
                          "fetchedAt of the pinned key set copy held in the ConfigMap", ["issuer"], registry=REGISTRY)


def key_state(ring: KeyRing, kid: str, now: datetime) -> str:
    """signing (the key the service signs with now), pending, retired (published only) or expired."""
    current = ring.signing_key(now)
    for k in ring.keys:
        if k.kid != kid:
            continue
        if current is not None and k.kid == current.kid:
            return "signing"
        if k.activate_at > now:
            return "pending"
        return "retired" if k.published(now) else "expired"
    return "unknown"


def record_keys(ring: KeyRing, now: datetime) -> None:
    """Replace the per-key age series with the ring's keys (bounded: a handful of keys)."""
    KEY_AGE.clear()
    for k in ring.keys:
        KEY_AGE.labels(kid=k.kid, state=key_state(ring, k.kid, now)).set((now - k.created_at).total_seconds())
    KEYS.set(len(ring.keys))

STATUS_QUEUE = Gauge(_P + "status_queue",
                     "Bindings whose status waits to be written (queued, in flight, backing off)",
                     registry=REGISTRY)
WATCH_RESTARTS = Counter(_P + "watch_restarts_total", "Binding watch streams ended, by why", ["reason"],
                         registry=REGISTRY)
SETTINGS_RELOADS = Counter(_P + "settings_reloads_total",
                           "settings.yaml changes picked up without a restart, by result (applied, error)", ["result"],
                           registry=REGISTRY)
LISTINGS = Counter(_P + "listings_total", "Full listings of the bindings, by why", ["reason"], registry=REGISTRY)
SKIPPED = Counter(_P + "binding_events_skipped_total",
                  "Binding events skipped cheaply (resourceVersion handled already, or overtaken by a watch event)",
                  registry=REGISTRY)
