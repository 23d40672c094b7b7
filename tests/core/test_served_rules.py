"""core.served: the exchange pods' Lease reports and the Served condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gitlab_sts.core.served import (
    LEASE_LABELS,
    REASON_NO_PODS,
    REASON_NOT_READY,
    REASON_PROPAGATING,
    REASON_SERVED,
    SERVED_ANNOTATION,
    DocumentHistory,
    PodReport,
    live,
    parse_lease,
    served_condition,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
A, B, C = "a" * 64, "b" * 64, "c" * 64


def lease(name: str, digests: str, renewed: datetime = NOW, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": LEASE_LABELS if labels is None else labels,
                         "annotations": {SERVED_ANNOTATION: digests}},
            "spec": {"holderIdentity": name.removeprefix("gitlab-sts-"), "leaseDurationSeconds": 15,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


def test_parse_lease() -> None:
    report = parse_lease(lease("gitlab-sts-pod-1", f"{B},{A}"), prefix="gitlab-sts")
    assert report == PodReport("pod-1", (A, B), NOW + timedelta(seconds=15))
    assert parse_lease(lease("other-pod-1", A), prefix="gitlab-sts") is None  # another release's Lease
    assert parse_lease(lease("gitlab-sts-pod-1", A, labels={}), prefix="gitlab-sts") is None  # not ours at all
    assert parse_lease({"metadata": {"labels": LEASE_LABELS}, "spec": {}}) is None


def test_only_live_reports_count() -> None:
    fresh = PodReport("a", (A,), NOW + timedelta(seconds=1))
    gone = PodReport("b", (A,), NOW - timedelta(seconds=1))
    starting = PodReport("c", (), NOW + timedelta(seconds=1))  # serves nothing yet: not counted (not ready either)
    assert live([gone, fresh, starting], NOW) == [fresh]


def test_served_needs_every_live_pod_on_a_document_with_the_current_generation() -> None:
    history = DocumentHistory(limit=2)
    history.record(A, {"ns/x": 1})
    history.record(B, {"ns/x": 2})
    one = PodReport("pod-1", (B,), NOW)
    two = PodReport("pod-2", (A,), NOW)

    def cond(gen: int, pods: list[PodReport], ready: bool = True) -> dict[str, Any]:
        return served_condition("ns/x", gen, ready, pods, history, None, NOW)

    assert cond(2, [one])["status"] == "True" and cond(2, [one])["reason"] == REASON_SERVED
    waiting = cond(2, [one, two])
    assert (waiting["status"], waiting["reason"]) == ("False", REASON_PROPAGATING)
    assert "1 of 2" in waiting["message"] and "pod-2" in waiting["message"]
    # A pod whose workers disagree (mid-reload) lists both documents: it serves generation 2 only once both do.
    assert cond(2, [PodReport("pod-3", (A, B), NOW)])["status"] == "False"
    assert cond(2, [])["reason"] == REASON_NO_PODS
    assert cond(2, [one], ready=False)["reason"] == REASON_NOT_READY
    # A document the operator does not remember (written before it started, or long ago) proves nothing.
    history.record(C, {"ns/x": 3})  # pushes A out (limit 2)
    assert not history.knows(A)
    assert cond(1, [two])["status"] == "False"


def test_transition_time_moves_only_when_the_status_flips() -> None:
    history = DocumentHistory()
    history.record(A, {"ns/x": 1})
    pods = [PodReport("p", (A,), NOW)]
    first = served_condition("ns/x", 1, True, pods, history, None, NOW)
    later = NOW + timedelta(minutes=5)
    assert served_condition("ns/x", 1, True, pods, history, first, later)["lastTransitionTime"] == \
        first["lastTransitionTime"]
    flipped = served_condition("ns/x", 2, True, pods, history, first, later)
    assert flipped["status"] == "False" and flipped["lastTransitionTime"] != first["lastTransitionTime"]
