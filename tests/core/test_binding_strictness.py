"""A binding means exactly what it says: no type coercion, no snake_case aliases, a well-formed issuer."""

from __future__ import annotations

from typing import Any

import pytest

from gitlab_sts.core.bindings import compile_binding
from gitlab_sts.core.errors import CompileError

ROLE = "arn:aws:iam::123456789012:role/deploy"


def _spec(**parts: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"project": {"path": "a/b"}, "aws": {"roleArn": ROLE}}
    spec.update(parts)
    return spec


@pytest.mark.parametrize(("spec", "field"), [
    pytest.param(_spec(rules={"protectedRef": "yes"}), "spec.rules.protectedRef", id="string-for-bool"),
    pytest.param(_spec(rules={"protectedRef": 1}), "spec.rules.protectedRef", id="int-for-bool"),
    pytest.param(_spec(rules={"runnerIds": ["12"]}), "spec.rules.runnerIds", id="string-runner-id"),
    pytest.param(_spec(rules={"runnerIds": [True]}), "spec.rules.runnerIds", id="bool-runner-id"),
    pytest.param(_spec(project={"id": 4321}), "spec.project.id", id="int-project-id"),
    pytest.param(_spec(aws={"roleArn": ROLE, "tokenLifetimeSeconds": "900"}), "spec.aws.tokenLifetimeSeconds",
                 id="string-lifetime"),
    pytest.param(_spec(aws={"role_arn": ROLE}), "spec.aws", id="snake-case-field"),
    pytest.param(_spec(rules={"ref_type": "tag"}), "spec.rules.ref_type", id="snake-case-rule"),
    pytest.param(_spec(aws={"roleArn": ROLE, "sourceIdentity": ""}), "spec.aws.sourceIdentity",
                 id="empty-source-identity"),
    pytest.param(_spec(aws={"roleArn": ROLE, "sessionTags": ["ref"], "transitiveTags": ["ref", "ref"]}),
                 "spec.aws.transitiveTags", id="duplicate-transitive-tag"),
    pytest.param(_spec(issuer="gitlab.example.com"), "spec.issuer", id="issuer-without-scheme"),
    pytest.param(_spec(issuer="https://gitlab.example.com/"), "spec.issuer", id="issuer-trailing-slash"),
    pytest.param(_spec(issuer="http://gitlab.example.com"), "spec.issuer", id="issuer-plain-http"),
])
def test_loose_or_misspelt_specs_do_not_compile(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(CompileError) as exc:
        compile_binding("team-a", "deploy", spec)
    assert any(e.field.startswith(field) for e in exc.value.errors), str(exc.value)


def test_a_well_formed_issuer_compiles() -> None:
    b = compile_binding("team-a", "deploy", _spec(issuer="https://gitlab.example.com"))
    assert b.spec.issuer == "https://gitlab.example.com"
