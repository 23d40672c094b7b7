"""The chart's rendered operator RBAC equals operator/rbac.py, and stays least-privilege."""

from __future__ import annotations

from pathlib import Path

import yaml

from gitlab_sts.operator.rbac import RULES, render

RENDERED = Path(__file__).resolve().parents[2] / "charts/gitlab-sts/files/operator-rbac.yaml"


def test_rendered_file_is_current() -> None:
    assert RENDERED.read_text() == render(), "run: python -m gitlab_sts.operator.rbac > " + str(RENDERED)


def test_least_privilege() -> None:
    doc = yaml.safe_load(RENDERED.read_text())
    everything = doc["watchedRules"] + doc["ownRules"]
    verbs = {v for r in everything for v in r["verbs"]}
    assert "*" not in verbs and "delete" not in verbs and "update" not in verbs
    assert all("*" not in r["resources"] for r in everything)
    # Secrets are never readable outside the operator's own namespace, and only the keys Secret by name.
    assert not any("secrets" in r["resources"] for r in doc["watchedRules"])
    for r in doc["ownRules"]:
        if "get" in r["verbs"] or "patch" in r["verbs"]:
            assert r.get("resourceNames"), r
    # Bindings are read-only except their status.
    for r in doc["watchedRules"]:
        if r["resources"] == ["gitlabawsbindings"]:
            assert r["verbs"] == ["get", "list", "watch"]


def test_every_rule_says_why() -> None:
    assert all(rule.why for rule in RULES)
