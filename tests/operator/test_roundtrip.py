"""Operator output read by core.bindingdoc.load_bindings_dir decides exactly like the manifests read directly."""

from __future__ import annotations

import base64
import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import settings

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import Endpoint, KubeClient, path_for
from gitlab_sts.operator.runtime import build_runtime

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "examples/bindings").glob("*.yaml")), Path(__file__).parent / "fixtures/bindings.yaml"]
ISSUER = "https://gitlab.example.com"


def claim_sets() -> list[dict[str, Any]]:
    projects = [("platform/payments", "1001"), ("data/etl", "4321"), ("data/sub/x", "7"), ("other/p", "9")]
    refs = [("main", "branch", "true"), ("release/2.1", "branch", "false"), ("v1.2", "tag", "true")]
    envs = [None, "production", "staging"]
    sources = ["push", "schedule", "web"]
    out = []
    for (path, pid), (ref, ref_type, protected), env, source in itertools.product(projects, refs, envs, sources):
        claims: dict[str, Any] = {
            "iss": ISSUER, "project_path": path, "project_id": pid, "namespace_path": path.rsplit("/", 1)[0],
            "ref": ref, "ref_type": ref_type, "ref_protected": protected, "pipeline_source": source,
            "runner_id": 12, "runner_environment": "self-hosted", "user_login": "alice",
            "user_access_level": "maintainer", "pipeline_id": "55",
        }
        if env:
            claims.update(environment=env, environment_protected="true" if env == "production" else "false")
        out.append(claims)
    return out


def decisions(index: BindingIndex) -> list[list[tuple[str, Any]]]:
    return [[(c.binding.key, c.failure) for c in index.evaluate(ISSUER, claims)] for claims in claim_sets()]


@pytest.mark.asyncio
async def test_round_trip(k8s: Any, client: KubeClient, tmp_path: Path) -> None:
    manifests_dir = tmp_path / "manifests"
    manifests_dir.mkdir()
    for i, src in enumerate(SOURCES):
        shutil.copy(src, manifests_dir / f"{i:02d}-{src.name}")
        for doc in yaml.safe_load_all(src.read_text()):
            await client.create(path_for("gitlab-sts.io/v1alpha1", "gitlabawsbindings", doc["metadata"]["namespace"]),
                                doc)
    rt = build_runtime(OperatorConfig(namespace="gitlab-sts", debounce_seconds=0), settings(),
                       Endpoint(server=str(k8s.server.url)))
    await rt.start(loops=False)
    assert await rt.writer.flush()
    await rt.stop()

    cm = await client.get(path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings"))
    out_dir = tmp_path / "bindings"
    out_dir.mkdir()
    for key, text in (cm.get("data") or {}).items():  # what the kubelet projects into the service's volume
        (out_dir / key).write_text(text)
    for key, b64 in (cm.get("binaryData") or {}).items():
        (out_dir / key).write_bytes(base64.b64decode(b64))

    from_operator = load_bindings_dir(out_dir)
    from_manifests = load_bindings_dir(manifests_dir)
    assert sorted(b.key for b in from_operator.bindings) == sorted(b.key for b in from_manifests.bindings)
    assert [r.key for r in from_manifests.rejected] == ["team-data/broken"]
    assert from_operator.rejected == ()  # the operator never writes a binding that does not compile
    a = BindingIndex(from_operator.bindings, default_issuer=ISSUER)
    b = BindingIndex(from_manifests.bindings, default_issuer=ISSUER)
    got, want = decisions(a), decisions(b)
    assert got == want
    assert any(any(f is None for _, f in row) for row in got)  # some tokens match ...
    assert any(any(f is not None for _, f in row) for row in got)  # ... and some are refused
