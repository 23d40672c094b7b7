"""The CRD (charts/gitlab-sts/crds) agrees with core.bindings.BindingSpec field by field."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from gitlab_sts.core.bindings import GROUP, KIND, VERSION, BindingSpec
from gitlab_sts.core.crdschema import load_crd, version_schema

CRD_PATH = Path(__file__).resolve().parents[2] / "charts/gitlab-sts/crds/gitlabawsbindings.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd(CRD_PATH)


def _unwrap(annotation: Any) -> Any:
    """Strip Optional and Annotated (StrictStr is Annotated[str, Strict()])."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        assert len(args) == 1
        annotation = args[0]
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _expected_type(annotation: Any) -> str:
    a = _unwrap(annotation)
    if isinstance(a, type) and issubclass(a, BaseModel):
        return "object"
    if get_origin(a) is tuple:
        return "array"
    if get_origin(a) is Literal:
        return "string"
    return {str: "string", int: "integer", bool: "boolean"}[a]


def _compare(model: type[BaseModel], schema: dict[str, Any], where: str) -> None:
    props = schema["properties"]
    aliases = {(f.alias or name): (name, f) for name, f in model.model_fields.items()}
    assert set(props) == set(aliases), f"{where}: CRD {sorted(props)} vs model {sorted(aliases)}"
    required = set(schema.get("required", ()))
    for alias, (_name, field) in aliases.items():
        sub = props[alias]
        path = f"{where}.{alias}"
        assert sub.get("description"), f"{path} has no description"
        assert sub["type"] == _expected_type(field.annotation), path
        assert (alias in required) == field.is_required(), f"{path}: required differs"
        inner = _unwrap(field.annotation)
        if get_origin(inner) is Literal:
            assert sub["enum"] == list(get_args(inner)), path
        if get_origin(inner) is tuple:
            item = _unwrap(get_args(inner)[0])
            assert sub["items"]["type"] == _expected_type(item), path
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            _compare(inner, sub, path)
        for c in field.metadata:  # numeric bounds and patterns agree too
            for attr, key in (("ge", "minimum"), ("le", "maximum"), ("pattern", "pattern")):
                if getattr(c, attr, None) is not None:
                    assert sub[key] == getattr(c, attr), f"{path}.{key}"


def test_spec_matches_pydantic_model(crd: dict[str, Any]) -> None:
    _, schema = version_schema(crd, VERSION)
    _compare(BindingSpec, schema["properties"]["spec"], "spec")


def test_names_and_version(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"gitlabawsbindings.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Project"] == ".status.project"
    assert columns["Role"] == ".spec.aws.roleArn"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Served"] == '.status.conditions[?(@.type=="Served")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    """Every property without a description, and every node without a type (structural schema)."""
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for name, sub in schema.get("properties", {}).items():
        if name != "metadata" and not sub.get("description"):
            problems.append(f"{path}.{name}: no description")
        problems += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        problems += _walk(schema["items"], f"{path}[]")
    return problems


def test_structural_and_described(crd: dict[str, Any]) -> None:
    _, schema = version_schema(crd, VERSION)
    assert _walk(schema, "") == []


def test_cel_rules_present(crd: dict[str, Any]) -> None:
    _, schema = version_schema(crd, VERSION)
    spec = schema["properties"]["spec"]["properties"]
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("self.metadata.name" in r and "128" in r for r in rules)
    assert spec["project"]["x-kubernetes-validations"]
    assert "matches" in spec["aws"]["properties"]["roleArn"]["x-kubernetes-validations"][0]["rule"]
