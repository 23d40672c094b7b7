"""Statuses and the ConfigMap converge through API failures: the operator's own watch, status queue and retries.

Against KMock over real HTTP, with faults injected by the emulator (tests/operator/conftest.py): every
failed status patch, ConfigMap or Secret write is retried until it succeeds; a dropped watch resumes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from conftest import Fault
from operator_helpers import es256, eventually, manifest, metric, running_operator, settings, spec

from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import Endpoint, KubeClient, path_for
from gitlab_sts.operator.reconcile import PLURAL
from gitlab_sts.operator.runtime import Runtime, build_runtime

API = "gitlab-sts.io/v1alpha1"
CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings")
STATUS = r"/gitlabawsbindings/[^/]+/status$"



@pytest_asyncio.fixture()
async def running(k8s: Any) -> AsyncIterator[Runtime]:
    """The whole operator runtime (watch, status workers, writer, key loop) against the emulator."""
    cfg = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0.05, resync_seconds=3600)
    async with running_operator(k8s, cfg) as rt:
        yield rt


async def ready(client: KubeClient, ns: str, name: str, generation: int = 1) -> dict[str, Any]:
    status = (await client.get(path_for(API, PLURAL, ns, name))).get("status") or {}
    assert status["observedGeneration"] == generation
    assert [c["status"] for c in status["conditions"] if c["type"] == "Ready"] == ["True"], status
    return status


async def in_config(client: KubeClient, *keys: str) -> None:
    doc = json.loads((await client.get(CM))["data"]["bindings.json"])
    assert sorted(f"{b['namespace']}/{b['name']}" for b in doc["bindings"]) == sorted(keys)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [403, 409, 429, 500])
async def test_failed_status_patches_are_retried_until_right(k8s: Any, client: KubeClient, running: Runtime,
                                                             status: int) -> None:
    retries = metric("status_patches_total", result="retry") or 0
    k8s.faults.append(Fault("PATCH", STATUS, status, count=3))
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one"))
    await eventually(lambda: ready(client, "team-a", "one"))
    assert k8s.faults[0].count == 0, "every injected failure was met"
    assert (metric("status_patches_total", result="retry") or 0) >= retries + 3
    await eventually(lambda: in_config(client, "team-a/one"))


@pytest.mark.asyncio
async def test_a_newer_edit_replaces_the_status_being_retried(k8s: Any, client: KubeClient,
                                                              running: Runtime) -> None:
    k8s.faults.append(Fault("PATCH", STATUS, 500, count=2))
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one", spec(project={"path": "a/b"})))
    await client.merge_patch(path_for(API, PLURAL, "team-a", "one"),
                             {"metadata": {"generation": 2}, "spec": {"project": {"path": "c/d"}}})
    status = await eventually(lambda: ready(client, "team-a", "one", 2))
    assert status["project"] == "c/d"


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [403, 409, 429, 500])
async def test_failed_configmap_writes_are_retried(k8s: Any, client: KubeClient, running: Runtime,
                                                   status: int) -> None:
    await eventually(lambda: in_config(client))  # the empty document of the seeded start
    k8s.faults.append(Fault("PATCH", r"/configmaps/gitlab-sts-bindings$", status, count=2))
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one"))
    await eventually(lambda: in_config(client, "team-a/one"))
    assert k8s.faults[0].count == 0
    assert running.writer.last_error is None


@pytest.mark.asyncio
async def test_failed_secret_writes_are_retried(k8s: Any, client: KubeClient) -> None:
    k8s.faults.append(Fault("POST", r"/secrets$", 500, count=2))
    cfg = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0.05)
    rt = build_runtime(cfg, settings(), Endpoint(server=str(k8s.server.url)), new_key=es256)
    await rt.start()
    try:
        secret = await eventually(lambda: client.get(path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")))
        assert "keyset.json" in secret["data"]
        assert k8s.faults[0].count == 0
    finally:
        await rt.stop()


@pytest.mark.asyncio
async def test_a_dropped_watch_resumes_and_misses_nothing(k8s: Any, client: KubeClient, running: Runtime) -> None:
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "before"))
    await eventually(lambda: ready(client, "team-a", "before"))
    restarts = metric("watch_restarts_total", reason="timeout") or 0
    k8s.drop_watches()
    # This create ends the old stream (the emulator drops it at its next event, unsent); the new stream,
    # opened from the last resourceVersion seen, must bring it.
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "during"))
    await eventually(lambda: ready(client, "team-a", "during"))
    await eventually(lambda: in_config(client, "team-a/before", "team-a/during"))
    assert (metric("watch_restarts_total", reason="timeout") or 0) > restarts
    assert metric("listings_total", reason="gone") is None, "resumed, not re-listed"


@pytest.mark.asyncio
async def test_a_refused_watch_is_retried(k8s: Any, client: KubeClient, running: Runtime) -> None:
    k8s.faults.append(Fault("GET", r"/gitlabawsbindings$", 500, count=2))  # the re-watch fails twice
    k8s.drop_watches()
    await client.create(path_for(API, PLURAL, "team-b"), manifest("team-b", "later"))
    await eventually(lambda: ready(client, "team-b", "later"))
    assert k8s.faults[0].count == 0


@pytest.mark.asyncio
async def test_mend_repairs_a_status_changed_behind_our_back(k8s: Any, client: KubeClient,
                                                             running: Runtime) -> None:
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one"))
    await eventually(lambda: ready(client, "team-a", "one"))
    # The watch would see this edit; the emulator's store is changed directly so that only the mend can.
    key = next(k for k in k8s.objects if k[0].plural == PLURAL and k[2] == "one")
    k8s.objects[key].patch({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "X"}]}})
    with pytest.raises(AssertionError):
        await ready(client, "team-a", "one")
    await running.reconciler.resync()
    await eventually(lambda: ready(client, "team-a", "one"))
