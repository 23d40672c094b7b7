"""What the exchange pods serve: their Lease reports, and each binding's Served condition.

Each exchange pod renews a coordination.k8s.io Lease of its own whose annotation lists the digests of
the bindings documents its workers serve (service/follow.py). The operator remembers which generation of
each binding the documents it wrote contain, and a binding is Served once every live Lease reports only
documents that contain its current generation. The names below are the contract between the two.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gitlab_sts.core.timefmt import rfc3339

SERVED_ANNOTATION = "gitlab-sts.io/bindings-sha256"
LEASE_COMPONENT = "exchange-served"
LEASE_LABELS = {"app.kubernetes.io/name": "gitlab-sts", "app.kubernetes.io/component": LEASE_COMPONENT}
LEASE_SELECTOR = ",".join(f"{k}={v}" for k, v in LEASE_LABELS.items())

SERVED = "Served"
REASON_SERVED = "Served"
REASON_PROPAGATING = "Propagating"
REASON_NO_PODS = "NoExchangePods"
REASON_NOT_READY = "NotReady"


@dataclass(frozen=True)
class PodReport:
    """One exchange pod's Lease: which bindings documents it serves, and until when the report holds."""

    pod: str
    digests: tuple[str, ...]
    expires: datetime


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_lease(obj: Mapping[str, Any], prefix: str = "") -> PodReport | None:
    """A Lease written by an exchange pod (name starting with prefix), or None for any other Lease."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get("app.kubernetes.io/component") != LEASE_COMPONENT:
        return None
    name = str(meta.get("name") or "")
    if prefix and not name.startswith(prefix + "-"):
        return None
    spec = obj.get("spec") or {}
    renewed = _parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds")
    if renewed is None or not isinstance(duration, int):
        return None
    value = str((meta.get("annotations") or {}).get(SERVED_ANNOTATION) or "")
    digests = tuple(sorted(d for d in value.split(",") if d))
    return PodReport(str(spec.get("holderIdentity") or name), digests, renewed + timedelta(seconds=duration))


def live(reports: Iterable[PodReport], now: datetime) -> list[PodReport]:
    """The reports of pods that renewed their Lease in time and serve a document.

    A pod that is gone stops counting when its Lease expires; a pod that serves nothing yet (starting, or no
    bindings loaded at all, so not ready either) does not count until it does, so that a pod starting during a
    rollout does not flip every binding's condition twice.
    """
    return sorted((r for r in reports if r.expires > now and r.digests), key=lambda r: r.pod)


class DocumentHistory:
    """Which generation of each binding the last few bindings documents held, by document digest."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._docs: OrderedDict[str, Mapping[str, int]] = OrderedDict()

    def record(self, digest: str, generations: Mapping[str, int]) -> None:
        """Remember a document the operator wrote (or found already written): binding key -> generation."""
        self._docs[digest] = dict(generations)
        self._docs.move_to_end(digest)
        while len(self._docs) > self.limit:
            self._docs.popitem(last=False)

    def knows(self, digest: str) -> bool:
        """Whether this document is one of the remembered ones."""
        return digest in self._docs

    def generation(self, digest: str, key: str) -> int | None:
        """The binding's generation in that document (None: not in it, or the document is not remembered)."""
        doc = self._docs.get(digest)
        return None if doc is None else doc.get(key)


def served_condition(key: str, generation: int, ready: bool, pods: list[PodReport], history: DocumentHistory,
                     previous: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The Served condition of one binding; lastTransitionTime moves only when the status flips."""
    if not ready:
        status, reason, message = "False", REASON_NOT_READY, "not in the exchange service's config (see Ready)"
    elif not pods:
        status, reason, message = "False", REASON_NO_PODS, "no exchange pod reports what it serves (no live Lease)"
    else:
        waiting = [p.pod for p in pods if any(history.generation(d, key) != generation for d in p.digests)]
        if waiting:
            status, reason = "False", REASON_PROPAGATING
            shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
            message = (f"{len(pods) - len(waiting)} of {len(pods)} exchange pods serve generation {generation}; "
                       f"waiting for {shown}")
        else:
            status, reason = "True", REASON_SERVED
            message = f"every live exchange pod ({len(pods)}) serves generation {generation}"
    since = None
    if previous and previous.get("status") == status:
        since = previous.get("lastTransitionTime")
    return {"type": SERVED, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since or rfc3339(now)}
