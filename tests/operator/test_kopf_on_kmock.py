"""kopf running the operator against KMock over HTTP: login via a kubeconfig, startup, seeding, keys, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from operator_helpers import SETTINGS_YAML, manifest

from gitlab_sts.operator import handlers
from gitlab_sts.operator.kube import ApiError, KubeClient, path_for

API = "gitlab-sts.io/v1alpha1"
CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings")


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, KeyError, ApiError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_operator_under_kopf(k8s: Any, client: KubeClient, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "settings.yaml").write_text(SETTINGS_YAML)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.server.url).rstrip("/")}}],
        "users": [{"name": "u", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("GITLAB_STS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("GITLAB_STS_NAMESPACE", "gitlab-sts")
    monkeypatch.setenv("GITLAB_STS_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS", "0.1")
    await client.create(path_for(API, "gitlabawsbindings", "team-a"), manifest("team-a", "before-start"))

    stop = asyncio.Event()
    task = asyncio.create_task(kopf.operator(standalone=True, clusterwide=True, stop_flag=stop))
    try:
        async def config_has(*names: str) -> None:
            cm = await client.get(CM)
            doc = json.loads(cm["data"]["bindings.json"])
            assert [b["name"] for b in doc["bindings"]] == list(names)

        await eventually(lambda: config_has("before-start"))
        secret = await eventually(lambda: client.get(path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")))
        assert "keyset.json" in secret["data"]
        assert handlers.runtime().healthy()["bindings"] == 1
        # Binding watch events are not driven here: against KMock 0.8, kopf 1.45 completes discovery
        # but never opens a watch stream for the resource (no LIST/WATCH request is made), so the
        # event path is covered by calling the handlers directly (test_kube_io) and by tests/e2e.
        await handlers.binding_event(event={"type": "ADDED", "object": manifest("team-a", "direct")})
        await eventually(lambda: config_has("before-start", "direct"))
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
