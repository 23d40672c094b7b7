"""kopf running the operator against KMock over HTTP: login, startup, the operator's own LIST+WATCH, keys, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_helpers import SETTINGS_YAML, eventually, kmock_kubeconfig, manifest

from gitlab_sts.operator import handlers
from gitlab_sts.operator.kube import KubeClient, path_for
from gitlab_sts.operator.reconcile import PLURAL

API = "gitlab-sts.io/v1alpha1"
CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings")



@pytest.mark.asyncio
async def test_operator_under_kopf(k8s: Any, client: KubeClient, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.yaml").write_text(SETTINGS_YAML)
    kubeconfig = kmock_kubeconfig(k8s, tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("GITLAB_STS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("GITLAB_STS_NAMESPACE", "gitlab-sts")
    monkeypatch.setenv("GITLAB_STS_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS", "0.1")
    await client.create(path_for(API, "gitlabawsbindings", "team-a"), manifest("team-a", "before-start"))

    stop = asyncio.Event()
    task = asyncio.create_task(kopf.operator(standalone=True, clusterwide=True, stop_flag=stop))
    try:
        async def config_has(*names: str) -> dict[str, Any]:
            cm = await client.get(CM)
            doc = json.loads(cm["data"]["bindings.json"])
            assert [b["name"] for b in doc["bindings"]] == list(names)
            return {b["name"]: b["spec"] for b in doc["bindings"]}

        async def ready(ns: str, name: str, generation: int) -> None:
            status = (await client.get(path_for(API, "gitlabawsbindings", ns, name))).get("status") or {}
            assert status["observedGeneration"] == generation
            assert status["conditions"][0]["status"] == "True"

        await eventually(lambda: config_has("before-start"))
        secret = await eventually(lambda: client.get(path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")))
        assert "keyset.json" in secret["data"]
        assert handlers.runtime().healthy()["bindings"] == 1
        await eventually(lambda: ready("team-a", "before-start", 1))

        # From here on every change travels KMock -> the operator's watch stream -> status queue: nothing
        # calls the reconciler directly.
        async def watching() -> None:
            assert any(r.action == kmock.action.WATCH and r.resource is not None and r.resource.plural == PLURAL
                       for r in k8s), "no watch stream for the bindings"

        await eventually(watching)
        await client.create(path_for(API, "gitlabawsbindings", "team-b"), manifest("team-b", "created"))
        await eventually(lambda: config_has("before-start", "created"))
        await eventually(lambda: ready("team-b", "created", 1))

        new_role = "arn:aws:iam::123456789012:role/payments-deploy-v2"
        # KMock does not bump metadata.generation on a spec change as an API server does: the patch does.
        await client.merge_patch(path_for(API, "gitlabawsbindings", "team-b", "created"),
                                 {"metadata": {"generation": 2}, "spec": {"aws": {"roleArn": new_role}}})

        async def role_changed() -> None:
            specs = await config_has("before-start", "created")
            assert specs["created"]["aws"]["roleArn"] == new_role

        await eventually(role_changed)
        await eventually(lambda: ready("team-b", "created", 2))

        await client.request("DELETE", path_for(API, "gitlabawsbindings", "team-a", "before-start"))
        await eventually(lambda: config_has("created"))
        assert handlers.runtime().healthy()["bindings"] == 1
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
