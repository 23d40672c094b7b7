"""The Helm chart, rendered by real Helm 3 and Helm 4 binaries and checked object by object."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.operator import rbac
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.service import rbac as exchange_rbac
from gitlab_sts.service.follow import FollowConfig
from gitlab_sts.service.paths import ConfigPaths
from tests.chart import tools
from tests.chart.conftest import ALL_FEATURES, MINIMAL, NAMESPACE, RELEASE, Helm, find, kinds

ROOT = tools.ROOT
CHART = tools.CHART
VALUES_TEXT = (CHART / "values.yaml").read_text()
# The Kubernetes version each helm layer ships kubectl for: validate against that API.
K8S_VERSION = {"helm3": "1.32.0", "helm4": "1.34.0"}
# Custom resources of other projects (no OpenAPI in kubernetes-validate): the fields they must have.
FOREIGN = {
    ("cert-manager.io/v1", "Certificate"): {"secretName", "dnsNames", "issuerRef"},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints"},
}


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every container of every workload."""
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            out += [(pod, c) for c in pod["containers"] + pod.get("initContainers", [])]
    return out


def env_of(container: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """A container's environment as the process sees it (fieldRef namespace resolved)."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = namespace
    return env


# --- lint, render, validate ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["minimal", "all-features"])
def test_helm_lint_is_clean(helm: Helm, values: Path) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout
    assert "[INFO]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["minimal", "all-features"])
def test_every_object_is_valid_kubernetes(helm: Helm, values: Path) -> None:
    docs = helm.template(values)
    version = K8S_VERSION[helm.layer.name]
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in FOREIGN:
            assert FOREIGN[key] <= set(doc["spec"]), f"{key}: missing {FOREIGN[key] - set(doc['spec'])}"
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "gitlab-sts"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "gitlab-sts-0.1.0"


def test_helm3_and_helm4_render_the_same(helm3: Helm) -> None:
    helm4 = Helm(tools.layer("helm4"))
    for values in (MINIMAL, ALL_FEATURES):
        assert helm3.template_text(values) == helm4.template_text(values)


def test_default_objects() -> None:
    helm = Helm(tools.layer("helm3"))
    docs = helm.template(MINIMAL)
    assert kinds(docs) == sorted([
        "ClusterRole/gitlab-sts-operator-watch", "ClusterRoleBinding/gitlab-sts-operator-watch",
        "ConfigMap/gitlab-sts-settings", "Deployment/gitlab-sts", "Deployment/gitlab-sts-operator",
        "PodDisruptionBudget/gitlab-sts", "Role/gitlab-sts", "Role/gitlab-sts-operator", "RoleBinding/gitlab-sts",
        "RoleBinding/gitlab-sts-operator", "Service/gitlab-sts", "Service/gitlab-sts-operator-metrics",
        "ServiceAccount/gitlab-sts", "ServiceAccount/gitlab-sts-operator",
    ])
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_all_features_objects(helm3: Helm) -> None:
    docs = helm3.template(ALL_FEATURES)
    names = kinds(docs)
    for expected in ("Certificate/gitlab-sts", "HorizontalPodAutoscaler/gitlab-sts", "Ingress/gitlab-sts-public",
                     "NetworkPolicy/gitlab-sts", "NetworkPolicy/gitlab-sts-operator",
                     "ServiceMonitor/gitlab-sts", "ServiceMonitor/gitlab-sts-operator",
                     "PodDisruptionBudget/gitlab-sts"):
        assert expected in names
    assert "ClusterRoleBinding/gitlab-sts-operator-watch" not in names


# --- the objects the operator owns are never templated ---------------------------------------------------

@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["minimal", "all-features"])
def test_operator_owned_objects_are_not_templated_and_mounted_optional(helm3: Helm, values: Path) -> None:
    docs = helm3.template(values)
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"] == ["gitlab-sts-settings"]
    pod = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["bindings"]["configMap"] == {"name": "gitlab-sts-bindings", "optional": True}
    assert volumes["keys"]["secret"]["secretName"] == "gitlab-sts-keys"
    assert volumes["keys"]["secret"]["optional"] is True
    assert "optional" not in volumes["settings"]["configMap"]
    for v in pod["volumes"]:
        assert "hostPath" not in v


def test_object_names_from_values(helm3: Helm) -> None:
    docs = helm3.template(MINIMAL, sets={"names.bindingsConfigMap": "b", "names.keysSecret": "k",
                                         "names.statusConfigMap": "s", "names.pinnedJwksConfigMap": "p"})
    env = env_of(find(docs, "Deployment", "gitlab-sts-operator")["spec"]["template"]["spec"]["containers"][0])
    cfg = OperatorConfig.from_env(env)
    assert (cfg.bindings_configmap, cfg.keys_secret, cfg.status_configmap, cfg.pinned_jwks_configmap) == (
        "b", "k", "s", "p")
    role = find(docs, "Role", "gitlab-sts-operator")
    assert {n for r in role["rules"] for n in r.get("resourceNames", [])} == {"b", "k", "s", "p"}
    exchange_role = find(docs, "Role", "gitlab-sts")
    assert {n for r in exchange_role["rules"] for n in r.get("resourceNames", [])} == {
        "gitlab-sts-settings", "b", "k", "p"}
    follow = FollowConfig.from_env(env_of(find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
                                          ["containers"][0]))
    assert follow is not None
    assert (follow.settings_configmap, follow.bindings_configmap, follow.keys_secret, follow.pinned_configmap) == (
        "gitlab-sts-settings", "b", "k", "p")
    vols = {v["name"]: v for v in find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["volumes"]}
    assert vols["bindings"]["configMap"]["name"] == "b" and vols["keys"]["secret"]["secretName"] == "k"
    assert vols["pinned"]["configMap"]["name"] == "p"


# --- RBAC: exactly operator/rbac.py's rules -----------------------------------------------------------------

def _expected(scope: str, names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for rule in rbac.RULES:
        if rule.scope != scope:
            continue
        k8s = rule.as_k8s()
        if "resourceNames" in k8s:
            k8s["resourceNames"] = [names.get(n, n) for n in k8s["resourceNames"]]
        out.append(k8s)
    return out


def test_rbac_file_is_the_rendered_rules() -> None:
    assert (CHART / "files/operator-rbac.yaml").read_text() == rbac.render()


@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["all-namespaces", "watched-namespaces"])
def test_operator_rbac_is_exactly_the_python_rules(helm: Helm, values: Path) -> None:
    docs = helm.template(values)
    names = {rbac.BINDINGS_CONFIGMAP: "gitlab-sts-bindings", rbac.KEYS_SECRET: "gitlab-sts-keys",
             rbac.STATUS_CONFIGMAP: "gitlab-sts-status", rbac.PINNED_JWKS_CONFIGMAP: "gitlab-sts-pinned-jwks"}
    assert find(docs, "ClusterRole")["rules"] == _expected("watched", names)
    assert find(docs, "Role", "gitlab-sts-operator")["rules"] == _expected("own", names)
    assert "${" not in yaml.safe_dump_all(docs)
    # Nothing else grants anything: the operator's two roles and the exchange pods' read-only Role.
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ClusterRole", "Role")) == [
        ("ClusterRole", "gitlab-sts-operator-watch"), ("Role", "gitlab-sts"), ("Role", "gitlab-sts-operator")]
    sa = {"kind": "ServiceAccount", "name": "gitlab-sts-operator", "namespace": NAMESPACE}
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for b in bindings:
        if b["roleRef"]["name"] == "gitlab-sts":
            assert b["subjects"] == [{"kind": "ServiceAccount", "name": "gitlab-sts", "namespace": NAMESPACE}]
            continue
        assert b["subjects"] == [sa], "only the operator's ServiceAccount is bound to the operator's roles"
    watched = yaml.safe_load(values.read_text()).get("operator", {}).get("watchNamespaces", [])
    watch_bindings = [b for b in bindings if b["roleRef"]["kind"] == "ClusterRole"]
    if not watched:
        assert [b["kind"] for b in watch_bindings] == ["ClusterRoleBinding"]
    else:
        assert sorted(b["metadata"]["namespace"] for b in watch_bindings) == sorted(watched)
        assert {b["kind"] for b in watch_bindings} == {"RoleBinding"}
    own = [b for b in bindings if b["roleRef"]["kind"] == "Role"]
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["name"]) for b in own) == [
        (NAMESPACE, "gitlab-sts"), (NAMESPACE, "gitlab-sts-operator")]


# --- the exchange pods' RBAC: exactly service/rbac.py's rules, read-only on the named objects -----------------

def test_exchange_rbac_file_is_the_rendered_rules() -> None:
    assert (CHART / "files/exchange-rbac.yaml").read_text() == exchange_rbac.render()


def test_exchange_rbac_is_exactly_the_python_rules_and_read_only(helm3: Helm) -> None:
    docs = helm3.template(MINIMAL)
    names = {exchange_rbac.SETTINGS_CONFIGMAP: "gitlab-sts-settings", exchange_rbac.BINDINGS_CONFIGMAP:
             "gitlab-sts-bindings", exchange_rbac.KEYS_SECRET: "gitlab-sts-keys",
             exchange_rbac.PINNED_JWKS_CONFIGMAP: "gitlab-sts-pinned-jwks"}
    expected = []
    for rule in exchange_rbac.RULES:
        k8s = rule.as_k8s()
        if "resourceNames" in k8s:
            k8s["resourceNames"] = [names[n] for n in k8s["resourceNames"]]
        expected.append(k8s)
    rules = find(docs, "Role", "gitlab-sts")["rules"]
    assert rules == expected
    for rule in rules:
        if rule["resources"] != ["leases"]:
            # ConfigMaps and the Secret: read-only, and only the named ones.
            assert set(rule["verbs"]) <= {"get", "list", "watch"} and rule["resourceNames"]
        else:
            assert rule["apiGroups"] == ["coordination.k8s.io"] and set(rule["verbs"]) == {"create", "patch"}
    pod = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["GITLAB_STS_FOLLOW_API"]["value"] == "true"
    assert env["GITLAB_STS_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_exchange_service_has_no_api_access_without_follow_api(helm3: Helm) -> None:
    docs = helm3.template(ALL_FEATURES, sets={"exchange.followApi": "false"})
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["name"] == "gitlab-sts"]
    assert find(docs, "ServiceAccount", "gitlab-sts")["automountServiceAccountToken"] is False
    pod = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "gitlab-sts"
    operator_pod = find(docs, "Deployment", "gitlab-sts-operator")["spec"]["template"]["spec"]
    assert operator_pod["automountServiceAccountToken"] is True


# --- pods: security context, probes, resources ---------------------------------------------------------------

@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["minimal", "all-features"])
def test_pods_are_locked_down(helm3: Helm, values: Path) -> None:
    docs = helm3.template(values)
    found = containers(docs)
    assert len(found) == 2
    for pod, c in found:
        psc, sc = pod["securityContext"], c["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}
        assert set(c["resources"]["limits"]) == {"cpu", "memory"}
        assert pod["enableServiceLinks"] is False
        # Writable paths are emptyDirs only.
        mounts = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        assert {m["name"] for m in c["volumeMounts"] if not m.get("readOnly")} <= empty, mounts


@pytest.mark.parametrize("tls", [True, False])
def test_exchange_probes_and_tls(helm3: Helm, tls: bool) -> None:
    sets = {} if tls else {"tls.enabled": "false"}
    docs = helm3.template(MINIMAL, sets=sets)
    c = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["containers"][0]
    scheme, port = ("HTTPS", "https") if tls else ("HTTP", "http")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port, "scheme": scheme}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port, "scheme": scheme}
    assert c["ports"] == [{"name": port, "containerPort": 8443, "protocol": "TCP"}]
    env = env_of(c)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    if tls:
        assert env["GITLAB_STS_TLS_CERT"] == mounts["tls"] + "/tls.crt"
        assert env["GITLAB_STS_TLS_KEY"] == mounts["tls"] + "/tls.key"
        vol = {v["name"]: v for v in find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["volumes"]}
        assert vol["tls"]["secret"]["secretName"] == "gitlab-sts-tls"
    else:
        assert "GITLAB_STS_TLS_CERT" not in env and "tls" not in mounts
    svc = find(docs, "Service", "gitlab-sts")
    assert svc["spec"]["ports"][0]["targetPort"] == port and svc["spec"]["ports"][0]["port"] == 8443


def test_exchange_environment_matches_what_the_service_reads(helm3: Helm) -> None:
    docs = helm3.template(MINIMAL)
    pod = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_of(c)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        paths = ConfigPaths.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert str(paths.settings) == mounts["settings"] + "/settings.yaml"
    assert str(paths.bindings) == mounts["bindings"]
    assert str(paths.keys) == mounts["keys"]
    assert str(paths.pinned) == mounts["pinned"]
    pinned_volume = next(v for v in pod["volumes"] if v["name"] == "pinned")
    assert pinned_volume["configMap"] == {"name": "gitlab-sts-pinned-jwks", "optional": True}
    # Every GITLAB_STS_*/PROMETHEUS_* variable the chart sets is one the service reads.
    package = ROOT / "service/src/gitlab_sts/service"
    sources = "".join((package / name).read_text()
                      for name in ("gunicorn.conf.py", "paths.py", "state.py", "follow.py", "preflight.py"))
    for name in env:
        assert f'"{name}"' in sources, f"{name} is set by the chart but read nowhere in service/"
    assert env["GITLAB_STS_BIND"] == "0.0.0.0:8443"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(mounts["run"] + "/")
    assert env["GITLAB_STS_STATE_DIR"].startswith(mounts["tmp"] + "/")
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {"run", "tmp"} <= emptydirs
    assert c["args"] == ["service"]


def test_operator_deployment_and_environment(helm: Helm) -> None:
    docs = helm.template(ALL_FEATURES)
    dep = find(docs, "Deployment", "gitlab-sts-operator")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["operator"]
    cfg = OperatorConfig.from_env(env_of(c))
    assert cfg.namespace == NAMESPACE
    assert cfg.watch_namespaces == ("gitlab-sts", "team-a", "team-b")
    assert (cfg.bindings_configmap, cfg.keys_secret, cfg.status_configmap, cfg.pinned_jwks_configmap) == (
        "gitlab-sts-bindings", "gitlab-sts-keys", "gitlab-sts-status", "gitlab-sts-pinned-jwks")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cfg.metrics_port == ports["metrics"] == 9090
    assert cfg.liveness_endpoint == f"http://0.0.0.0:{ports['liveness']}/healthz"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness", "scheme": "HTTP"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert cfg.settings_file == Path(mounts["settings"]) / "settings.yaml"
    # caBundle paths (/etc/gitlab-sts/ca/...) resolve in the operator too, for pinnedJwksSource fetches.
    assert mounts["ca"] == "/etc/gitlab-sts/ca"
    svc = find(docs, "Service", "gitlab-sts-operator-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_exchange_scaling_and_spread(helm3: Helm) -> None:
    docs = helm3.template(MINIMAL)
    dep = find(docs, "Deployment", "gitlab-sts")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(s["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] for s in spread)
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"] and pdb["spec"]["maxUnavailable"] == 1
    docs = helm3.template(ALL_FEATURES)
    dep = find(docs, "Deployment", "gitlab-sts")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gitlab-sts"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    spread_json = '[{"maxSkew": 2, "topologyKey": "x", "whenUnsatisfiable": "DoNotSchedule"}]'
    custom = helm3.template(MINIMAL, sets={"exchange.topologySpreadConstraints": spread_json})
    (only,) = find(custom, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert only["maxSkew"] == 2 and only["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "exchange"


def test_selectors_hold_only_stable_labels(helm3: Helm) -> None:
    for dep in (d for d in helm3.template(ALL_FEATURES) if d["kind"] == "Deployment"):
        assert set(dep["spec"]["selector"]["matchLabels"]) == {
            "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
        assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "platform"  # commonLabels


def test_image_reference(helm3: Helm) -> None:
    c = find(helm3.template(MINIMAL), "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "gitlab-sts:0.1.0"
    c = find(helm3.template(ALL_FEATURES), "Deployment", "gitlab-sts")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].startswith("registry.example.com/platform/gitlab-sts@sha256:")


# --- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [MINIMAL, ALL_FEATURES], ids=["minimal", "all-features"])
def test_rendered_settings_parse(helm: Helm, values: Path) -> None:
    text = find(helm.template(values), "ConfigMap", "gitlab-sts-settings")["data"]["settings.yaml"]
    settings = parse_settings(text)
    given = yaml.safe_load(values.read_text())["settings"]
    assert settings.issuer == given["issuer"]
    assert [g.issuer for g in settings.gitlab] == [g["issuer"] for g in given["gitlab"]]


def test_settings_defaults_in_values_are_the_models_defaults(helm3: Helm) -> None:
    text = find(helm3.template(MINIMAL), "ConfigMap", "gitlab-sts-settings")["data"]["settings.yaml"]
    minimal = yaml.safe_load(MINIMAL.read_text())["settings"]
    assert parse_settings(text) == Settings.model_validate(minimal)


def test_settings_change_rolls_both_deployments(helm3: Helm) -> None:
    def checksums(sets: dict[str, str] | None) -> tuple[set[str], str]:
        docs = helm3.template(MINIMAL, sets=sets)
        text = find(docs, "ConfigMap")["data"]["settings.yaml"]
        found = {d["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
                 for d in docs if d["kind"] == "Deployment"}
        return found, hashlib.sha256(text.rstrip("\n").encode()).hexdigest()

    before, digest = checksums(None)
    after, digest2 = checksums({"settings.tokens.lifetime": "600"})
    assert before == {digest} and after == {digest2}
    assert before != after


# --- Ingress, NetworkPolicy, ServiceMonitor, Certificate ------------------------------------------------------

def test_ingress_exposes_only_the_two_public_paths(helm: Helm) -> None:
    docs = helm.template(ALL_FEATURES)
    ing = find(docs, "Ingress")
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "sts.example.com"
    paths = rule["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [
        ("/.well-known/openid-configuration", "Exact"), ("/.well-known/jwks.json", "Exact")]
    for p in paths:
        assert p["backend"]["service"] == {"name": "gitlab-sts", "port": {"name": "https"}}
    assert ing["spec"]["tls"] == [{"hosts": ["sts.example.com"], "secretName": "gitlab-sts-public-tls"}]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt",
                                              "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}
    assert "defaultBackend" not in ing["spec"]


def test_network_policies(helm3: Helm) -> None:
    docs = helm3.template(ALL_FEATURES)
    pol = find(docs, "NetworkPolicy", "gitlab-sts")
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    assert pol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "exchange"
    rules = pol["spec"]["ingress"]
    assert [r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for r in rules] == [
        "gitlab-runner", "ingress-nginx", "monitoring"]
    assert rules[0]["from"][0]["podSelector"] == {"matchLabels": {"app": "gitlab-runner-job"}}
    assert all(r["ports"] == [{"port": 8443, "protocol": "TCP"}] for r in rules)
    op = find(docs, "NetworkPolicy", "gitlab-sts-operator")
    assert op["spec"]["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]
    # Without ingress and metrics: the runners only.
    docs = helm3.template(MINIMAL, sets={"networkPolicy.enabled": "true",
                                         "networkPolicy.runnerNamespaceSelector": '{"matchLabels": {"a": "b"}}'})
    assert len(find(docs, "NetworkPolicy", "gitlab-sts")["spec"]["ingress"]) == 1
    assert find(docs, "NetworkPolicy", "gitlab-sts-operator")["spec"]["ingress"] == []


def test_service_monitors_and_certificate(helm3: Helm) -> None:
    docs = helm3.template(ALL_FEATURES)
    sm = find(docs, "ServiceMonitor", "gitlab-sts")
    (ep,) = sm["spec"]["endpoints"]
    assert (ep["port"], ep["scheme"], ep["path"]) == ("https", "https", "/metrics")
    assert ep["tlsConfig"] == {"serverName": "gitlab-sts.gitlab-sts.svc",
                               "ca": {"secret": {"name": "gitlab-sts-tls", "key": "ca.crt"}}}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    op = find(docs, "ServiceMonitor", "gitlab-sts-operator")
    assert op["spec"]["endpoints"][0]["port"] == "metrics"
    cert = find(docs, "Certificate")
    assert cert["spec"]["secretName"] == "gitlab-sts-tls"
    assert cert["spec"]["dnsNames"] == ["gitlab-sts", "gitlab-sts.gitlab-sts", "gitlab-sts.gitlab-sts.svc",
                                        "gitlab-sts.gitlab-sts.svc.cluster.local", "sts.internal.example.com"]
    assert cert["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


# --- names ----------------------------------------------------------------------------------------------------

def test_names_are_cut_to_63_and_keep_their_suffix(helm3: Helm) -> None:
    long = "x" * 53  # helm's longest release name
    docs = helm3.template(MINIMAL, ALL_FEATURES, release=long)
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
        for value in d["metadata"]["labels"].values():
            assert len(value) <= 63
    names = [d["metadata"]["name"] for d in docs]
    assert any(n.endswith("-operator-watch") for n in names)
    assert any(n.endswith("-settings") for n in names)
    docs = helm3.template(MINIMAL, sets={"fullnameOverride": "y" * 80})
    assert {len(d["metadata"]["name"]) for d in docs} <= set(range(1, 64))
    assert len({d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}) == 2


# --- values: schema and contradictions --------------------------------------------------------------------------

def test_checked_in_schema_is_generated_from_values() -> None:
    from tools import values_schema
    assert (CHART / "values.schema.json").read_text() == values_schema.generate()


@pytest.mark.parametrize(("sets", "needle"), [
    ({"exchange.replicaCount": "0"}, "replicaCount"),
    ({"exchange.bogus": "1"}, "bogus"),
    ({"settings.tokens.lifetime": "10"}, "lifetime"),
    ({"settings.unknownField": "1"}, "unknownField"),
    ({"settings.gitlab[0].algorithms[0]": "1"}, "algorithms"),
    ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
    ({"image.digest": "latest"}, "digest"),
    ({"tls.certManager.issuerRef.kind": "Thing"}, "kind"),
    ({"operator.watchNamespaces[0]": "Not_A_Namespace"}, "watchNamespaces"),
    ({"exchange.logLevel": "loud"}, "logLevel"),
])
def test_schema_rejects_bad_values(helm: Helm, sets: dict[str, str], needle: str) -> None:
    err = helm.error(MINIMAL, sets=sets)
    assert "schema" in err.lower()
    assert needle in err


@pytest.mark.parametrize(("sets", "needle"), [
    ({"settings.issuer": "http://sts.example.com"}, "settings.issuer must be an https:// URL"),
    ({"settings.issuer": "https://sts.example.com/"}, "must not end with '/'"),
    ({"settings.issuer": "https://sts.example.com:8443"}, "must not carry a port"),
    ({"settings.gitlab[0].issuer": "http://gitlab.example.com"}, "settings.gitlab[0].issuer must be an https:// URL"),
    ({"settings.gitlab": "[]"}, "settings.gitlab needs at least one trusted GitLab instance"),
    ({"tls.secretName": ""}, "tls.enabled needs a certificate"),
    ({"tls.certManager.enabled": "true"}, "tls.certManager.enabled needs tls.certManager.issuerRef.name"),
    ({"tls.enabled": "false", "tls.certManager.enabled": "true"}, "contradicts tls.enabled=false"),
    ({"ingress.enabled": "true"}, "ingress.enabled needs ingress.host"),
    ({"ingress.enabled": "true", "ingress.host": "other.example.com"}, "differs from the host of settings.issuer"),
    ({"ingress.enabled": "true", "ingress.host": "sts.example.com", "settings.issuer": "https://sts.example.com/x"},
     "without a path"),
    ({"networkPolicy.enabled": "true"}, "networkPolicy.runnerNamespaceSelector"),
    ({"exchange.autoscaling.enabled": "true", "exchange.autoscaling.minReplicas": "5",
      "exchange.autoscaling.maxReplicas": "2"}, "exceeds maxReplicas"),
    ({"operator.livenessPort": "9090"}, "must differ"),
])
def test_contradictory_values_fail_with_a_clear_message(helm3: Helm, sets: dict[str, str], needle: str) -> None:
    err = helm3.error(MINIMAL, sets=sets)
    assert "gitlab-sts: invalid values" in err
    assert needle in err


def test_missing_required_values_are_all_named(helm: Helm) -> None:
    err = helm.error()
    for needle in ("settings.issuer is required", "settings.gitlab needs at least one", "tls.enabled needs"):
        assert needle in err


def test_every_value_is_documented() -> None:
    """Each key has a `# --` comment, except the children of a value whose schema is given whole."""
    lines = VALUES_TEXT.splitlines()
    key = re.compile(r"^( *)([A-Za-z0-9_.-]+):")
    stack: list[tuple[int, str, bool]] = []  # indent, key, free-form
    missing = []
    for i, line in enumerate(lines):
        m = key.match(line)
        if not m:
            continue
        indent = len(m[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            above.append(lines[j].strip())
            j -= 1
        free_parent = any(free for _, _, free in stack)
        is_group = line.rstrip().endswith(":") and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
        documented = any(a.startswith("# --") for a in above)
        if not free_parent and not documented and not is_group:
            missing.append(".".join([k for _, k, _ in stack] + [m[2]]))
        is_free = any(a.startswith(("# @schema {", "# @schema-from")) for a in above)
        stack.append((indent, m[2], is_free))
    assert missing == []


def test_readme_values_table_lists_every_value() -> None:
    from tools import values_schema
    readme = (CHART / "README.md").read_text()
    for path in values_schema.documented_paths():
        assert f"| `{path}` |" in readme, f"{path} is missing from the README's values table"


# --- NOTES.txt --------------------------------------------------------------------------------------------------

def test_notes_have_the_real_next_steps(helm: Helm) -> None:
    notes = helm.notes(ALL_FEATURES)
    assert "aws iam create-open-id-connect-provider --url https://sts.example.com " \
           "--client-id-list sts.amazonaws.com" in notes
    assert '"Federated": "arn:aws:iam::<ACCOUNT_ID>:oidc-provider/sts.example.com"' in notes
    assert '"sts.example.com:sub": "system:gitlabawsbinding:team-a:deploy"' in notes
    assert "kind: GitLabAWSBinding" in notes and "namespace: team-a" in notes
    # The job: the CI/CD component with this installation's URL and audience, and the runner's CA mount.
    assert "service_url: https://gitlab-sts.gitlab-sts.svc:8443" in notes
    assert "audience: https://sts.example.com" in notes
    assert "component: $CI_SERVER_FQDN/platform/gitlab-sts/aws-credentials@" in notes
    assert "extends: .gitlab-sts-aws" in notes
    assert "[[runners.kubernetes.volumes.config_map]]" in notes and 'mount_path = "/etc/gitlab-sts"' in notes
    assert "get secret gitlab-sts-tls -o jsonpath='{.data.ca\\.crt}'" in notes
    assert "curl -fsS https://sts.example.com/.well-known/jwks.json" in notes
    if helm.major >= 4:
        assert helm.install_notes(ALL_FEATURES).strip() == notes.strip()
    plain = helm.notes(MINIMAL, sets={"tls.enabled": "false"})
    assert "service_url: http://gitlab-sts.gitlab-sts.svc:8443" in plain
    assert 'ca_bundle: ""' in plain and "volumes.config_map" not in plain
    assert "WARNING: tls.enabled is false" in plain


def test_replay_store_url_comes_from_a_secret(helm3: Helm) -> None:
    sets = {"replayStore.secretName": "valkey-url", "settings.tokens.replayProtection": "true",
            "settings.tokens.replayStore.urlFile": "/etc/gitlab-sts/replay-store/url"}
    docs = helm3.template(MINIMAL, sets=sets)
    pod = find(docs, "Deployment", "gitlab-sts")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["replay-store"]["mountPath"] == "/etc/gitlab-sts/replay-store"
    assert mounts["replay-store"]["readOnly"] is True
    assert volumes["replay-store"]["secret"]["secretName"] == "valkey-url"
    # The rendered settings name the file, never the URL.
    settings = parse_settings(find(docs, "ConfigMap", "gitlab-sts-settings")["data"]["settings.yaml"])
    assert settings.tokens.replay_store is not None
    assert settings.tokens.replay_store.url_file == "/etc/gitlab-sts/replay-store/" + "url"
    # One without the other is refused with a message that says what to set.
    assert "replayStore.secretName" in helm3.error(MINIMAL, sets={k: v for k, v in sets.items()
                                                                 if k != "replayStore.secretName"})
    assert "settings.tokens.replayStore" in helm3.error(MINIMAL, sets={"replayStore.secretName": "valkey-url"})
    assert "replay-store" not in str(helm3.template(MINIMAL))
