"""Propagation end to end against a real API server (KUBECONFIG): apply -> usable, delete -> refused, in seconds.

The operator and the exchange service (real gunicorn) run as local processes, each authenticated as its own
ServiceAccount with exactly the chart's rendered rules (files/operator-rbac.yaml, files/exchange-rbac.yaml);
the service's "mounted volume" is a local folder that never changes, so every change it serves came through
its watches. A client exchanges a job token in a tight loop while bindings are applied and deleted with
kubectl; the test prints p50/p99 of apply -> first successful exchange and delete -> first refusal, with 1
binding and with E2E_BINDINGS (10,000) others present, and checks the Served condition. Needs no pods.
Run with `make e2e`.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gitlab_sts.localserver import free_port, service_env, start_gunicorn, wait_ready
from tests.e2e.test_operator_e2e import apply, binding, eventually, holds, kubectl
from tests.service.harness import FakeGitLabProcess, keyring_file, one_key_ring

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG pointing at a cluster"),
    pytest.mark.timeout(3600),
]

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts/gitlab-sts/crds/gitlabawsbindings.yaml"
OPERATOR_RBAC = ROOT / "charts/gitlab-sts/files/operator-rbac.yaml"
EXCHANGE_RBAC = ROOT / "charts/gitlab-sts/files/exchange-rbac.yaml"
NAMES = {"${bindingsConfigMap}": "gitlab-sts-bindings", "${keysSecret}": "gitlab-sts-keys",
         "${statusConfigMap}": "gitlab-sts-status", "${pinnedJwksConfigMap}": "gitlab-sts-pinned-jwks",
         "${settingsConfigMap}": "gitlab-sts-settings"}
LIMIT = 2.0  # seconds, p99 (issue #13)
ROUNDS = int(os.environ.get("E2E_ROUNDS", "20"))
MANY = int(os.environ.get("E2E_BINDINGS", "10000"))
GRANT = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
         "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}


def rules_of(path: Path) -> dict[str, Any]:
    text = path.read_text()
    for placeholder, value in NAMES.items():
        text = text.replace(placeholder, value)
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def role_docs(ns: str, sa: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": sa, "namespace": ns},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa, "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
    ]


def kubeconfig_for(ns: str, sa: str, path: Path) -> Path:
    token = kubectl("create", "token", sa, "-n", ns, "--duration=2h").stdout.strip()
    view = yaml.safe_load(kubectl("config", "view", "--minify", "--raw").stdout)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": view["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
    }))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """CRD, namespaces, both ServiceAccounts with the chart's rules, the operator and the service running."""
    ns = f"gsts-prop-{uuid.uuid4().hex[:6]}"
    watched = f"{ns}-a"
    tmp = tmp_path_factory.mktemp("prop")
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/gitlabawsbindings.gitlab-sts.io", "--timeout=60s")
    for name in (ns, watched):
        kubectl("create", "namespace", name)
    operator_rules = rules_of(OPERATOR_RBAC)
    docs = role_docs(ns, "operator", operator_rules["ownRules"])
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "operator-watch", "namespace": watched}, "rules": operator_rules["watchedRules"]})
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "operator-watch", "namespace": watched},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator-watch"},
                 "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]})
    docs += role_docs(ns, "exchange", rules_of(EXCHANGE_RBAC)["rules"])
    apply(docs)
    operator_config = kubeconfig_for(ns, "operator", tmp / "operator.kubeconfig")
    exchange_config = kubeconfig_for(ns, "exchange", tmp / "exchange.kubeconfig")

    gitlab = FakeGitLabProcess()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = yaml.safe_dump({"issuer": url, "gitlab": [{"issuer": gitlab.issuer, "audiences": [url]}]})
    apply([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gitlab-sts-settings", "namespace": ns},
            "data": {"settings.yaml": settings}}])
    settings_dir = tmp / "settings"
    settings_dir.mkdir()
    (settings_dir / "settings.yaml").write_text(settings)
    # The service's "volumes": settings, no bindings, a key set the operator's Secret replaces through the API.
    volume = tmp / "volume"
    (volume / "bindings").mkdir(parents=True)
    keyring_file(volume / "keys", one_key_ring())
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        op_log = (tmp / "operator.log").open("wb")
        logs.append(op_log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gitlab_sts.operator"], stdout=op_log, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(operator_config), "GITLAB_STS_NAMESPACE": ns,
                 "GITLAB_STS_WATCH_NAMESPACES": watched, "GITLAB_STS_CONFIG_DIR": str(settings_dir),
                 "GITLAB_STS_OPERATOR_METRICS_PORT": "0", "GITLAB_STS_OPERATOR_LIVENESS": "",
                 "GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS": os.environ.get("E2E_DEBOUNCE", "0.2"),
                 "GITLAB_STS_EXCHANGE_LEASE_PREFIX": "gitlab-sts"}))
        # The operator creates the keys Secret and the bindings ConfigMap before the service starts.
        eventually(lambda: kubectl("get", "secret", "gitlab-sts-keys", "-n", ns))
        env, _ = service_env(settings_dir / "settings.yaml", volume / "bindings", volume / "keys", host="127.0.0.1",
                             port=port, workers=2, metrics_dir=tmp / "metrics")
        env.update({"KUBECONFIG": str(exchange_config), "GITLAB_STS_FOLLOW_API": "true", "GITLAB_STS_NAMESPACE": ns,
                    "GITLAB_STS_POD_NAME": "local-exchange", "GITLAB_STS_LEASE_PREFIX": "gitlab-sts",
                    "GITLAB_STS_STATE_DIR": str(tmp / "state")})
        (tmp / "metrics").mkdir()
        svc_log = (tmp / "service.log").open("wb")
        logs.append(svc_log)
        procs.append(start_gunicorn(env, stdout=subprocess.DEVNULL, stderr=svc_log))
        wait_ready(url, procs[-1], timeout=60)
        token = gitlab.token(url, project_path="g/p", project_id="99", ref="main")
        yield {"ns": ns, "watched": watched, "url": url, "token": token, "tmp": tmp}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        for log in logs:
            log.close()
        gitlab.stop()
        for name in (ns, watched):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def exchange_ok(session: requests.Session, world: dict[str, Any]) -> bool:
    answer = session.post(world["url"] + "/v1/token", data={**GRANT, "subject_token": world["token"]}, timeout=15)
    assert answer.status_code in (200, 403), answer.text
    return answer.status_code == 200


def until(session: requests.Session, world: dict[str, Any], ok: bool, timeout: float = 30.0) -> float:
    """Exchange in a tight loop until the outcome is `ok`; the time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exchange_ok(session, world) == ok:
            return time.monotonic()
    raise AssertionError(f"exchange did not become {'usable' if ok else 'refused'} within {timeout} s")


def measure(world: dict[str, Any], label: str) -> dict[str, float]:
    """ROUNDS x (apply, wait usable, delete, wait refused); prints and returns p50/p99 in ms."""
    session = requests.Session()
    ns = world["watched"]
    body = yaml.safe_dump(binding(ns, "measured", project={"path": "g/p"}, rules={"refs": ["main"]}))
    applied, revoked = [], []
    for _ in range(ROUNDS):
        until(session, world, ok=False)
        kubectl("apply", "-f", "-", stdin=body)
        accepted = time.monotonic()  # kubectl returned: the API server accepted the object
        applied.append(until(session, world, ok=True) - accepted)
        kubectl("delete", "gitlabawsbinding", "measured", "-n", ns, "--wait=false")
        accepted = time.monotonic()
        revoked.append(until(session, world, ok=False) - accepted)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    out = {"apply_p50": pct(applied, 0.5), "apply_p99": pct(applied, 0.99),
           "delete_p50": pct(revoked, 0.5), "delete_p99": pct(revoked, 0.99)}
    print(f"\n[{label}] apply->usable p50/p99 {out['apply_p50']:.0f}/{out['apply_p99']:.0f} ms; "
          f"delete->refused p50/p99 {out['delete_p50']:.0f}/{out['delete_p99']:.0f} ms "
          f"({ROUNDS} rounds, mean apply {statistics.mean(applied) * 1000:.0f} ms)")
    return out


def served(world: dict[str, Any], name: str) -> dict[str, Any]:
    obj = json.loads(kubectl("get", "gitlabawsbinding", name, "-n", world["watched"], "-o", "json").stdout)
    conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    assert conds["Served"]["observedGeneration"] == obj["metadata"]["generation"]
    return dict(conds["Served"])


def test_one_binding(world: dict[str, Any]) -> None:
    numbers = measure(world, "1 binding")
    assert numbers["apply_p99"] < LIMIT * 1000
    assert numbers["delete_p99"] < LIMIT * 1000


def test_served_condition_follows_the_leases(world: dict[str, Any]) -> None:
    ns = world["watched"]
    apply([binding(ns, "served", project={"path": "g/p"}, rules={"refs": ["release/*"]})])
    eventually(holds(lambda: served(world, "served")["status"] == "True"), timeout=30)
    lease = json.loads(kubectl("get", "lease", "gitlab-sts-local-exchange", "-n", world["ns"], "-o", "json").stdout)
    assert lease["metadata"]["annotations"]["gitlab-sts.io/bindings-sha256"]
    apply([binding(ns, "served", project={"path": "g/p"}, rules={"refs": ["release/**"]})])
    eventually(holds(lambda: served(world, "served")["status"] == "True"), timeout=30)
    kubectl("delete", "gitlabawsbinding", "served", "-n", ns)


def test_tightened_guard_stops_minting_and_the_operator_follows(world: dict[str, Any]) -> None:
    """A guard added to the settings ConfigMap refuses on the pod within 2 s; the operator marks it Forbidden."""
    ns, session = world["watched"], requests.Session()
    apply([binding(ns, "guarded", project={"path": "g/p"}, rules={"refs": ["main"]})])
    until(session, world, ok=True)
    settings_file = world["tmp"] / "settings" / "settings.yaml"
    original = settings_file.read_text()
    tightened = original + "guard:\n  - namespaces: [someone-else]\n"
    try:
        patch = json.dumps({"data": {"settings.yaml": tightened}})
        kubectl("patch", "configmap", "gitlab-sts-settings", "-n", world["ns"], "--type=merge", "-p", patch)
        accepted = time.monotonic()
        refused = until(session, world, ok=False) - accepted
        print(f"\n[guard] settings ConfigMap patched -> first refusal {refused * 1000:.0f} ms")
        assert refused < LIMIT
        staged = settings_file.with_name(".settings.new")  # the operator's "mounted" file, replaced by rename
        staged.write_text(tightened)
        staged.replace(settings_file)

        def forbidden() -> None:
            obj = json.loads(kubectl("get", "gitlabawsbinding", "guarded", "-n", ns, "-o", "json").stdout)
            ready_cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
            assert ready_cond["reason"] == "Forbidden"

        eventually(forbidden, timeout=30)
    finally:
        kubectl("patch", "configmap", "gitlab-sts-settings", "-n", world["ns"], "--type=merge", "-p",
                json.dumps({"data": {"settings.yaml": original}}))
        staged = settings_file.with_name(".settings.new")
        staged.write_text(original)
        staged.replace(settings_file)
        kubectl("delete", "gitlabawsbinding", "guarded", "-n", ns, "--wait=false")
    until(session, world, ok=False)


def test_many_bindings(world: dict[str, Any]) -> None:
    ns = world["watched"]
    filler = [binding(ns, f"filler-{i:05d}", project={"path": f"other/p{i}"}) for i in range(MANY)]
    for start in range(0, len(filler), 500):
        kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(filler[start:start + 500]))
    eventually(holds(lambda: len(json.loads(kubectl("get", "gitlabawsbindings", "-n", ns, "-o", "json").stdout)
                                 ["items"]) >= MANY), timeout=600)
    session = requests.Session()
    until(session, world, ok=False, timeout=120)
    numbers = measure(world, f"{MANY} bindings")
    assert numbers["apply_p99"] < LIMIT * 1000
    assert numbers["delete_p99"] < LIMIT * 1000

    # A burst of 1,000 edits: converged when the ConfigMap holds every edit and the pod's Lease reports it.
    burst = [binding(ns, f"filler-{i:05d}", project={"path": f"other/p{i}"}, rules={"refs": ["release/*"]})
             for i in range(min(1000, MANY))]
    started = time.monotonic()
    for start in range(0, len(burst), 500):
        kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(burst[start:start + 500]))
    submitted = time.monotonic() - started

    def converged() -> None:
        cm = json.loads(kubectl("get", "configmap", "gitlab-sts-bindings", "-n", world["ns"], "-o", "json").stdout)
        digest = cm["metadata"]["annotations"]["gitlab-sts.io/sha256"]
        doc = config_doc(cm)
        edited = {b["name"] for b in doc["bindings"] if b["spec"].get("rules", {}).get("refs") == ["release/*"]}
        assert len(edited) == len(burst)
        lease = json.loads(kubectl("get", "lease", "gitlab-sts-local-exchange", "-n", world["ns"], "-o",
                                   "json").stdout)
        assert lease["metadata"]["annotations"]["gitlab-sts.io/bindings-sha256"] == digest

    eventually(converged, timeout=120)
    took = time.monotonic() - started
    print(f"\n[burst] {len(burst)} edits applied in {submitted:.1f} s; served by the pod {took:.1f} s after the first")
    assert took < 30


def config_doc(cm: dict[str, Any]) -> dict[str, Any]:
    """The bindings document of the ConfigMap (plain or gzip)."""
    if "bindings.json.gz" in (cm.get("binaryData") or {}):
        doc: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(cm["binaryData"]["bindings.json.gz"])))
        return doc
    return dict(json.loads(cm["data"]["bindings.json"]))
