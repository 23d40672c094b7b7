"""The chart against a real API server (KUBECONFIG): install, upgrade, server-side dry run, uninstall.

With Helm 3 and Helm 4 (the same pinned binaries as tests/chart). Needs no running pods: the image need not
be pullable, so the release is installed without --wait. Run with `make e2e`.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import tools

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG pointing at a cluster"),
    pytest.mark.timeout(900),
]

VALUES = Path(__file__).resolve().parents[1] / "chart" / "values"
CRD_NAME = "gitlabawsbindings.gitlab-sts.io"
# Objects of these kinds in the release namespace (or cluster-wide) must be gone after uninstall.
CHECKED = "deployments,services,serviceaccounts,configmaps,roles,rolebindings,poddisruptionbudgets,networkpolicies"


def run(cmd: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **tools.helm_env(), "KUBECONFIG": os.environ["KUBECONFIG"]}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(params=sorted(tools.LAYERS))
def layer(request: pytest.FixtureRequest) -> tools.Layer:
    return tools.layer(request.param)


@pytest.fixture
def namespaces(layer: tools.Layer) -> Iterator[tuple[str, str]]:
    """A fresh release namespace and a watched namespace, deleted afterwards."""
    suffix = uuid.uuid4().hex[:6]
    ns, watched = f"gsts-e2e-{suffix}", f"gsts-e2e-team-{suffix}"
    for name in (ns, watched):
        run([str(layer.kubectl), "create", "namespace", name])
    yield ns, watched
    for name in (ns, watched):
        run([str(layer.kubectl), "delete", "namespace", name, "--wait=false"], check=False)


def _values(tmp: Path, release: str, watched: str) -> list[str]:
    extra = tmp / "e2e.yaml"
    extra.write_text(yaml.safe_dump({"fullnameOverride": release, "operator": {"watchNamespaces": [watched]},
                                     "exchange": {"replicaCount": 1}}))
    return ["-f", str(VALUES / "minimal.yaml"), "-f", str(extra)]


def _owned(kubectl: Path, ns: str, release: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={release}"
    names = run([str(kubectl), "get", CHECKED, "-n", ns, "-l", selector, "-o", "name"]).stdout.split()
    names += run([str(kubectl), "get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name"]).stdout.split()
    return sorted(names)


def test_install_upgrade_dry_run_and_uninstall(layer: tools.Layer, namespaces: tuple[str, str],
                                               tmp_path: Path) -> None:
    ns, watched = namespaces
    helm, kubectl = str(layer.helm), str(layer.kubectl)
    release = f"gsts-{layer.name}"
    values = _values(tmp_path, release, watched)

    # Every rendered object passes the API server's own validation and admission (server-side dry run).
    rendered = run([helm, "template", release, str(tools.CHART), "-n", ns, "--include-crds", *values]).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert all(d["metadata"].get("namespace") for d in docs
               if d["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"))
    for doc in docs:  # each object names its own namespace (the watched RoleBinding is not in ns)
        run([kubectl, "apply", "--dry-run=server", "-f", "-"], stdin=json.dumps(doc))

    run([helm, "install", release, str(tools.CHART), "-n", ns, *values])
    crd = json.loads(run([kubectl, "get", "crd", CRD_NAME, "-o", "json"]).stdout)
    assert crd["spec"]["group"] == "gitlab-sts.io"
    installed = _owned(layer.kubectl, ns, release)
    assert f"deployment.apps/{release}" in installed
    rb = run([kubectl, "get", "rolebindings", "-n", watched, "-o", "name"]).stdout
    assert "operator-watch" in rb

    # The operator's ServiceAccount may do exactly what operator/rbac.py says.
    sa = f"system:serviceaccount:{ns}:{release}-operator"

    def can(verb: str, resource: str, where: str, name: str = "", sub: str = "") -> bool:
        target = f"{resource}/{name}" if name else resource
        extra = ["--subresource", sub] if sub else []
        return run([kubectl, "auth", "can-i", verb, target, "-n", where, "--as", sa, *extra],
                   check=False).stdout.strip() == "yes"

    assert can("list", "gitlabawsbindings.gitlab-sts.io", watched)
    assert can("patch", "gitlabawsbindings.gitlab-sts.io", watched, "b", sub="status")
    assert not can("patch", "gitlabawsbindings.gitlab-sts.io", watched, "b"), "status only, never the spec"
    assert not can("list", "gitlabawsbindings.gitlab-sts.io", "default"), "only the watched namespace"
    assert can("patch", "configmaps", ns, f"{release}-bindings")
    assert not can("patch", "configmaps", ns, f"{release}-settings")
    assert not can("get", "secrets", ns, "something-else")
    # The exchange pods (exchange.followApi): read-only on exactly their own config objects, and Leases.
    exchange_sa = f"system:serviceaccount:{ns}:{release}"

    def exchange_can(verb: str, resource: str, name: str = "") -> bool:
        target = f"{resource}/{name}" if name else resource
        return run([kubectl, "auth", "can-i", verb, target, "-n", ns, "--as", exchange_sa],
                   check=False).stdout.strip() == "yes"

    for verb in ("get", "list", "watch"):
        assert exchange_can(verb, "configmaps", f"{release}-bindings")
        assert exchange_can(verb, "configmaps", f"{release}-settings")
        assert exchange_can(verb, "secrets", f"{release}-keys")
    assert not exchange_can("get", "configmaps", f"{release}-status")
    assert not exchange_can("list", "configmaps"), "list only by name"
    assert not exchange_can("get", "secrets", "something-else")
    assert not exchange_can("patch", "configmaps", f"{release}-bindings")
    assert not exchange_can("patch", "secrets", f"{release}-keys")
    assert exchange_can("create", "leases.coordination.k8s.io")
    assert exchange_can("patch", "leases.coordination.k8s.io", "any")
    assert not exchange_can("delete", "leases.coordination.k8s.io", "any")

    # An upgrade that changes settings rolls the pods (new checksum) and keeps every object.
    before = _checksum(kubectl, ns, release)
    run([helm, "upgrade", release, str(tools.CHART), "-n", ns, *values, "--set", "settings.tokens.lifetime=600"])
    assert _checksum(kubectl, ns, release) != before
    assert _owned(layer.kubectl, ns, release) == installed
    history = json.loads(run([helm, "history", release, "-n", ns, "-o", "json"]).stdout)
    assert [h["revision"] for h in history] == [1, 2]

    run([helm, "uninstall", release, "-n", ns, "--wait"])
    assert _owned(layer.kubectl, ns, release) == []
    # The CRD stays (Helm never deletes crds/): bindings users wrote must not vanish with a release.
    run([kubectl, "get", "crd", CRD_NAME])


def _checksum(kubectl: str, ns: str, release: str) -> str:
    dep: dict[str, Any] = json.loads(run([kubectl, "get", "deployment", release, "-n", ns, "-o", "json"]).stdout)
    return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/settings"])
