"""Offline CRD validation (for `gitlab-sts check --crd`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts.core.crdschema import load_crd, validate_manifest
from gitlab_sts.core.errors import ConfigError

CRD = load_crd(Path(__file__).resolve().parents[2] / "charts/gitlab-sts/crds/gitlabawsbindings.yaml")
GOOD: dict[str, Any] = {
    "apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
    "metadata": {"name": "deploy", "namespace": "team-a"},
    "spec": {"project": {"path": "g/p"}, "rules": {"refs": ["main"], "minAccessLevel": "maintainer"},
             "aws": {"roleArn": "arn:aws:iam::123456789012:role/deploy", "sessionTags": ["ref"],
                     "transitiveTags": ["ref"], "tokenLifetimeSeconds": 900}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


def test_valid_manifest() -> None:
    assert validate_manifest(GOOD, CRD) == []


@pytest.mark.parametrize(("doc", "expected"), [
    (_with("spec.project.id", "42"), "spec.project: set exactly one"),
    (_with("spec.project.path", None), "spec.project: set exactly one"),
    (_with("spec.aws.roleArn", "arn:aws:iam::12:role/x"), "spec.aws.roleArn: must look like"),
    (_with("metadata.name", "n" * 129), "(root): metadata.name must be at most 128"),
    (_with("spec.aws.transitiveTags", ["environment"]), "spec.aws: every aws.transitiveTags"),
    (_with("spec.aws.tokenLifetimeSeconds", 10), "spec.aws.tokenLifetimeSeconds: 10 is less than"),
    (_with("spec.rules.refType", "commit"), "spec.rules.refType: 'commit' is not one of"),
    (_with("spec.rules.refs", []), "spec.rules.refs: [] should be non-empty"),
    (_with("spec.rules.runnerIds", ["x"]), "spec.rules.runnerIds[0]: 'x' is not of type 'integer'"),
    (_with("spec.aws.rolearn", "typo"), "spec.aws: Additional properties are not allowed"),
    (_with("spec.aws", None), "spec: 'aws' is a required property"),
    (_with("kind", "Other"), "kind: must be GitLabAWSBinding"),
    (_with("apiVersion", "gitlab-sts.io/v9"), "apiVersion: the CRD serves no version v9"),
    (_with("metadata.name", None), "metadata.name: required"),
])
def test_invalid_manifests(doc: dict[str, Any], expected: str) -> None:
    problems = validate_manifest(doc, CRD)
    assert any(p.startswith(expected) for p in problems), problems


def test_not_a_mapping() -> None:
    assert validate_manifest(["x"], CRD) == ["(root): a manifest must be a mapping"]


def test_load_crd_refuses_other_documents(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("kind: ConfigMap\n")
    with pytest.raises(ConfigError, match="not a CustomResourceDefinition"):
        load_crd(path)
