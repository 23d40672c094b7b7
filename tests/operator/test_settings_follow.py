"""The operator picks up settings.yaml changes without a restart (against KMock): the guard, the trusted
issuers and the issuer in every trust policy; a broken file keeps the previous settings."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from operator_helpers import (
    GUARDED_YAML,
    SETTINGS_YAML,
    eventually,
    manifest,
    metric,
    running_operator,
    spec,
)

from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import KubeClient, path_for
from gitlab_sts.operator.reconcile import PLURAL
from gitlab_sts.operator.runtime import Runtime

API = "gitlab-sts.io/v1alpha1"
CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings")



def write(path: Path, text: str) -> None:
    """Replace the file by rename, as a ConfigMap volume update does."""
    staged = path.with_name(".settings.new")
    staged.write_text(text)
    staged.replace(path)


@pytest_asyncio.fixture()
async def running(k8s: Any, tmp_path: Path) -> AsyncIterator[Runtime]:
    (tmp_path / "settings.yaml").write_text(SETTINGS_YAML)
    cfg = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0.05, resync_seconds=3600, config_dir=tmp_path)
    async with running_operator(k8s, cfg) as rt:
        yield rt


async def ready(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    status = (await client.get(path_for(API, PLURAL, ns, name))).get("status") or {}
    return dict(status["conditions"][0])


async def in_config(client: KubeClient) -> list[str]:
    doc = json.loads((await client.get(CM))["data"]["bindings.json"])
    return sorted(f"{b['namespace']}/{b['name']}" for b in doc["bindings"])


@pytest.mark.asyncio
async def test_settings_follow_without_restart(k8s: Any, client: KubeClient, running: Runtime,
                                               tmp_path: Path) -> None:
    other_account = spec(aws={"roleArn": "arn:aws:iam::210987654321:role/x"})
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "ours"))
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "elsewhere", other_account))

    async def config_is(*keys: str) -> None:
        assert await in_config(client) == sorted(keys)

    async def reason(name: str, expected: str) -> None:
        assert (await ready(client, "team-a", name))["reason"] == expected

    await eventually(lambda: config_is("team-a/elsewhere", "team-a/ours"))
    applied = metric("settings_reloads_total", result="applied") or 0

    # A tightened guard: the binding naming another account is refused and leaves the document.
    write(tmp_path / "settings.yaml", GUARDED_YAML)
    await eventually(lambda: reason("elsewhere", "Forbidden"))
    await eventually(lambda: config_is("team-a/ours"))
    await eventually(lambda: reason("ours", "Compiled"))
    assert (metric("settings_reloads_total", result="applied") or 0) == applied + 1

    # A broken file keeps the settings in use (and says so in a metric).
    errors = metric("settings_reloads_total", result="error") or 0
    write(tmp_path / "settings.yaml", "issuer: [unclosed\n")

    async def error_counted() -> None:
        assert (metric("settings_reloads_total", result="error") or 0) == errors + 1

    await eventually(error_counted)
    assert await in_config(client) == ["team-a/ours"]

    # A new issuer URL reaches every trust policy; the guard lifted, the refused binding comes back.
    write(tmp_path / "settings.yaml", SETTINGS_YAML.replace("https://sts.example.com", "https://sts2.example.com"))

    async def new_issuer() -> None:
        obj = await client.get(path_for(API, PLURAL, "team-a", "ours"))
        condition = obj["status"]["trustPolicy"]["Statement"][0]["Condition"]["StringEquals"]
        assert "sts2.example.com:sub" in condition

    await eventually(new_issuer)
    await eventually(lambda: config_is("team-a/elsewhere", "team-a/ours"))
    assert running.settings.issuer == "https://sts2.example.com"
