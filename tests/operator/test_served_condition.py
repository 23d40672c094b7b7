"""The Served condition against KMock: true only once every live exchange Lease reports a document that holds
the binding's current generation (Leases written as service/follow.py writes them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import pytest
import pytest_asyncio
from operator_helpers import eventually, manifest, running_operator, spec

from gitlab_sts.core.served import LEASE_LABELS, SERVED_ANNOTATION
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.configsync import stored_digest
from gitlab_sts.operator.kube import KubeClient, path_for
from gitlab_sts.operator.reconcile import PLURAL
from gitlab_sts.operator.runtime import Runtime

API = "gitlab-sts.io/v1alpha1"
NS = "gitlab-sts"
CM = path_for("v1", "configmaps", NS, "gitlab-sts-bindings")
LEASES = path_for("coordination.k8s.io/v1", "leases", NS)



@pytest_asyncio.fixture()
async def running(k8s: Any) -> AsyncIterator[Runtime]:
    # A real API server always serves Leases; KMock lists only declared or stored resources.
    k8s.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True,
                                                                          verbs={"get", "list", "watch", "create",
                                                                                 "patch"})
    cfg = OperatorConfig(namespace=NS, debounce_seconds=0.05, resync_seconds=3600, exchange_lease_prefix="gitlab-sts")
    async with running_operator(k8s, cfg) as rt:
        yield rt


async def put_lease(client: KubeClient, pod: str, digests: list[str], renewed: datetime | None = None) -> None:
    renewed = renewed or datetime.now(UTC)
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": f"gitlab-sts-{pod}", "namespace": NS, "labels": LEASE_LABELS,
                         "annotations": {SERVED_ANNOTATION: ",".join(digests)}},
            "spec": {"holderIdentity": pod, "leaseDurationSeconds": 15,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
    path = path_for("coordination.k8s.io/v1", "leases", NS, f"gitlab-sts-{pod}")
    if await client.get_or_none(path) is None:
        await client.create(LEASES, body)
    else:
        await client.merge_patch(path, {"metadata": body["metadata"], "spec": body["spec"]})


async def served(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    obj = await client.get(path_for(API, PLURAL, ns, name))
    conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}
    assert list(conds)[:1] == ["Ready"]  # Ready stays the first condition
    return dict(conds["Served"])


async def written_digest(client: KubeClient) -> str:
    digest = stored_digest(await client.get(CM))
    assert digest
    return digest


@pytest.mark.asyncio
async def test_served_follows_what_every_live_pod_reports(k8s: Any, client: KubeClient, running: Runtime) -> None:
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one"))

    async def no_pods() -> None:
        assert (await served(client, "team-a", "one"))["reason"] == "NoExchangePods"

    await eventually(no_pods)
    first = await eventually(lambda: written_digest(client))
    await put_lease(client, "pod-a", [first])

    async def status_is(flag: str, reason: str, generation: int) -> dict[str, Any]:
        cond = await served(client, "team-a", "one")
        assert (cond["status"], cond["reason"], cond["observedGeneration"]) == (flag, reason, generation), cond
        return cond

    await eventually(lambda: status_is("True", "Served", 1))
    # A second pod that still serves an older document (here: none the operator wrote) holds it back.
    await put_lease(client, "pod-b", ["0" * 64])
    waiting = await eventually(lambda: status_is("False", "Propagating", 1))
    assert "pod-b" in waiting["message"] and "1 of 2" in waiting["message"]
    await put_lease(client, "pod-b", [first])
    await eventually(lambda: status_is("True", "Served", 1))

    # A new generation: not served until both pods report the document that holds it.
    edited = spec(rules={"refs": ["main", "release/*"]})
    await client.merge_patch(path_for(API, PLURAL, "team-a", "one"), {"metadata": {"generation": 2}, "spec": edited})

    async def rewritten() -> str:
        digest = await written_digest(client)
        assert digest != first
        return digest

    second = await eventually(rewritten)
    await eventually(lambda: status_is("False", "Propagating", 2))
    await put_lease(client, "pod-a", [second])
    await eventually(lambda: status_is("False", "Propagating", 2))
    # A pod whose workers are mid-reload reports both documents: still not all of it serves generation 2.
    await put_lease(client, "pod-b", [first, second])
    await eventually(lambda: status_is("False", "Propagating", 2))
    await put_lease(client, "pod-b", [second])
    await eventually(lambda: status_is("True", "Served", 2))

    # A pod that stopped renewing (expired Lease) no longer counts, whatever it last reported.
    await put_lease(client, "pod-c", [first], renewed=datetime.now(UTC) - timedelta(minutes=5))
    await asyncio.sleep(1.5)  # longer than the expiry tick
    assert (await served(client, "team-a", "one"))["status"] == "True"


@pytest.mark.asyncio
async def test_refused_binding_is_not_served(k8s: Any, client: KubeClient, running: Runtime) -> None:
    await client.create(path_for(API, PLURAL, "team-a"),
                        manifest("team-a", "bad", spec(issuer="https://untrusted.example")))

    async def not_ready() -> None:
        cond = await served(client, "team-a", "bad")
        assert (cond["status"], cond["reason"]) == ("False", "NotReady")

    await eventually(not_ready)
