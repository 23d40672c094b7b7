"""Operator end to end against a real API server (KUBECONFIG): CRD, RBAC, the operator as a local process.

The operator authenticates as its ServiceAccount with exactly the chart's rendered rules
(charts/gitlab-sts/files/operator-rbac.yaml). Run with `make e2e`.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG pointing at a cluster"),
    pytest.mark.timeout(900),
]

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts/gitlab-sts/crds/gitlabawsbindings.yaml"
RBAC = ROOT / "charts/gitlab-sts/files/operator-rbac.yaml"
SETTINGS = """
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
guard:
  - namespaces: ["{ns}-*"]
    accounts: ["123456789012"]
"""


def _kubectl() -> str:
    """kubectl from PATH, else the pinned one the chart tests unpack from PyPI (cached under build/tools)."""
    found = shutil.which("kubectl")
    if found:
        return found
    from tests.chart import tools

    return str(tools.layer("helm4").kubectl)


def kubectl(*args: str, stdin: str | None = None, check: bool = True, kubeconfig: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return subprocess.run([_kubectl(), *args], input=stdin, text=True, capture_output=True, check=check, env=env,
                          timeout=120)


def apply(docs: list[dict[str, Any]], check: bool = True) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), check=check)


def binding(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"project": {"path": "g/p"}, "rules": {"refs": ["main"]},
                            "aws": {"roleArn": "arn:aws:iam::123456789012:role/deploy"}}
    body.update(spec)
    return {"apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
            "metadata": {"name": name, "namespace": ns}, "spec": body}


def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, KeyError, subprocess.CalledProcessError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def holds(predicate: Callable[[], bool]) -> Callable[[], None]:
    """A check for eventually(): the predicate must become true."""
    def check() -> None:
        assert predicate()
    return check


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Namespaces, CRD, ServiceAccount with the chart's RBAC, and the operator running as that account."""
    ns = f"gsts-e2e-{uuid.uuid4().hex[:6]}"
    watched = [f"{ns}-a", f"{ns}-b"]
    tmp = tmp_path_factory.mktemp("e2e")
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/gitlabawsbindings.gitlab-sts.io", "--timeout=60s")
    for name in [ns, *watched]:
        kubectl("create", "namespace", name)
    rules = yaml.safe_load(RBAC.read_text().replace("${bindingsConfigMap}", "gitlab-sts-bindings")
                           .replace("${keysSecret}", "gitlab-sts-keys"))
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": f"{ns}-watched"},
         "rules": rules["watchedRules"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "operator", "namespace": ns}, "rules": rules["ownRules"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "operator", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]},
    ]
    for w in watched:  # the watched rules bound per watched namespace, as the chart does for a namespace list
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": f"{ns}-operator", "namespace": w},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": f"{ns}-watched"},
                     "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]})
    apply(docs)
    token = kubectl("create", "token", "operator", "-n", ns, "--duration=1h").stdout.strip()
    view = yaml.safe_load(kubectl("config", "view", "--minify", "--raw").stdout)
    cluster = view["clusters"][0]["cluster"]
    sa_config = tmp / "kubeconfig"
    sa_config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
    }))
    (tmp / "settings.yaml").write_text(SETTINGS.format(ns=ns))
    proc_env = {**os.environ, "KUBECONFIG": str(sa_config), "GITLAB_STS_NAMESPACE": ns,
                "GITLAB_STS_WATCH_NAMESPACES": ",".join(watched), "GITLAB_STS_CONFIG_DIR": str(tmp),
                "GITLAB_STS_OPERATOR_METRICS_PORT": "0", "GITLAB_STS_OPERATOR_LIVENESS": "",
                "GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS": "0.5"}
    log = (tmp / "operator.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gitlab_sts.operator"], env=proc_env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield {"ns": ns, "a": watched[0], "b": watched[1], "kubeconfig": str(sa_config),
               "log": str(tmp / "operator.log")}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        for name in [ns, *watched]:
            kubectl("delete", "namespace", name, "--wait=false", check=False)
        kubectl("delete", "clusterrole", f"{ns}-watched", check=False)


def config(env: dict[str, str]) -> list[str]:
    cm = json.loads(kubectl("get", "configmap", "gitlab-sts-bindings", "-n", env["ns"], "-o", "json").stdout)
    if "binaryData" in cm and "bindings.json.gz" in cm["binaryData"]:
        doc = json.loads(gzip.decompress(base64.b64decode(cm["binaryData"]["bindings.json.gz"])))
    else:
        doc = json.loads(cm["data"]["bindings.json"])
    return [f"{b['namespace']}/{b['name']}" for b in doc["bindings"]]


def ready(env: dict[str, str], ns: str, name: str) -> dict[str, Any]:
    obj = json.loads(kubectl("get", "gitlabawsbinding", name, "-n", ns, "-o", "json").stdout)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    return dict(obj["status"])


def test_converges_create_update_delete(env: dict[str, str]) -> None:
    a = env["a"]
    apply([binding(a, "one"), binding(a, "forbidden", aws={"roleArn": "arn:aws:iam::999999999999:role/x"})])
    eventually(holds(lambda: config(env) == [f"{a}/one"]))
    status = eventually(lambda: ready(env, a, "one"))
    assert status["conditions"][0]["status"] == "True"
    assert status["trustPolicy"]["Statement"][0]["Condition"]["StringEquals"]["sts.example.com:sub"] == \
        f"system:gitlabawsbinding:{a}:one"
    forbidden = eventually(lambda: ready(env, a, "forbidden"))
    assert forbidden["conditions"][0]["reason"] == "Forbidden"
    events = kubectl("get", "events", "-n", a, "--field-selector", "involvedObject.name=forbidden").stdout
    assert "Forbidden" in events
    apply([binding(a, "one", project={"id": "42"})])
    eventually(holds(lambda: ready(env, a, "one")["project"] == "id:42"))
    kubectl("delete", "gitlabawsbinding", "one", "-n", a)
    eventually(holds(lambda: config(env) == []))


def test_api_server_refuses_invalid_specs(env: dict[str, str]) -> None:
    for bad in (binding(env["a"], "two-selectors", project={"path": "g/p", "id": "1"}),
                binding(env["a"], "bad-arn", aws={"roleArn": "arn:aws:iam::1:role/x"}),
                binding(env["a"], "n" * 129)):
        result = apply([bad], check=False)
        assert result.returncode != 0, bad["metadata"]["name"]


def test_keys_secret_created(env: dict[str, str]) -> None:
    secret = eventually(lambda: json.loads(kubectl("get", "secret", "gitlab-sts-keys", "-n", env["ns"], "-o",
                                                   "json").stdout))
    keyset = json.loads(base64.b64decode(secret["data"]["keyset.json"]))
    assert len(keyset["keys"]) == 2


def test_operator_cannot_read_other_secrets(env: dict[str, str]) -> None:
    result = kubectl("get", "secrets", "-n", env["a"], check=False, kubeconfig=env["kubeconfig"])
    assert result.returncode != 0 and "forbidden" in result.stderr.lower()


def test_thousand_bindings(env: dict[str, str]) -> None:
    b = env["b"]
    docs = [binding(b, f"bulk-{i:04d}", project={"path": f"g/p{i}"}) for i in range(1000)]
    for start in range(0, 1000, 200):
        apply(docs[start:start + 200])
    started = time.monotonic()
    eventually(holds(lambda: sum(1 for k in config(env) if k.startswith(f"{b}/bulk-")) == 1000), timeout=300)
    print(f"1,000 bindings in the config {time.monotonic() - started:.1f}s after the last apply")
    kubectl("delete", "gitlabawsbindings", "--all", "-n", b, "--wait=false")
    eventually(holds(lambda: not any(k.startswith(f"{b}/") for k in config(env))), timeout=300)
