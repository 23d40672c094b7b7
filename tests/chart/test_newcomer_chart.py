"""Chart items of issue #15: a bare `helm lint` names the missing values; the public TLS Secret has a source."""

from __future__ import annotations

from tests.chart import tools
from tests.chart.conftest import ALL_FEATURES, MINIMAL, Helm, find

INGRESS = {"ingress.enabled": "true", "ingress.host": "sts.example.com"}


def test_bare_helm_lint_names_the_missing_values_instead_of_crashing(helm: Helm) -> None:
    proc = helm.run("lint", str(tools.CHART), check=False)
    out = proc.stdout + proc.stderr
    assert "index out of range" not in out and "error calling index" not in out, out
    assert "settings.issuer is required" in out
    assert "settings.gitlab needs at least one trusted GitLab instance" in out
    assert "tls.enabled needs a certificate" in out
    assert proc.returncode == 0, out  # lint reports the chart's own `fail` messages as findings, not a crash


def test_ingress_tls_from_a_cert_manager_cluster_issuer(helm: Helm) -> None:
    # all-features.yaml sets ingress.tls.clusterIssuer: letsencrypt.
    ingress = find(helm.template(MINIMAL, ALL_FEATURES), "Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    notes = helm.notes(MINIMAL, ALL_FEATURES)
    assert "which this chart does not create" not in notes
    namespaced = find(helm.template(MINIMAL, sets={**INGRESS, "ingress.tls.issuer": "public"}), "Ingress")
    assert namespaced["metadata"]["annotations"]["cert-manager.io/issuer"] == "public"
    assert "cert-manager.io/cluster-issuer" not in namespaced["metadata"]["annotations"]
    both = helm.error(MINIMAL, sets={**INGRESS, "ingress.tls.clusterIssuer": "a", "ingress.tls.issuer": "b"})
    assert "ingress.tls.clusterIssuer and ingress.tls.issuer are exclusive" in both


def test_without_an_issuer_the_notes_say_which_secret_to_create(helm: Helm) -> None:
    ingress = find(helm.template(MINIMAL, sets=INGRESS), "Ingress")
    secret = ingress["spec"]["tls"][0]["secretName"]
    assert not any(k.startswith("cert-manager.io/") for k in ingress["metadata"].get("annotations", {}))
    notes = helm.notes(MINIMAL, sets=INGRESS)
    assert f"The Ingress serves TLS with Secret {secret}, which this chart does not create" in notes
    assert "ingress.tls.clusterIssuer" in notes


def test_exchange_pods_wait_for_the_operator_less_than_liveness_allows(helm3: Helm) -> None:
    docs = helm3.template(MINIMAL)
    deployment = next(d for d in docs if d["kind"] == "Deployment" and "operator" not in d["metadata"]["name"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    wait = float(env["GITLAB_STS_START_WAIT_SECONDS"])
    live = container["livenessProbe"]
    # The wait ends before the kubelet's first liveness failure could restart the container mid-wait.
    assert 0 < wait <= live["initialDelaySeconds"]
