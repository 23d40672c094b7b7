"""Validate a manifest against a CustomResourceDefinition offline (OpenAPI schema plus its CEL rules)."""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
import yaml
from celpy.adapter import json_to_cel

from gitlab_sts.core.errors import ConfigError

_CEL_ENV = celpy.Environment()
# OpenAPI/Kubernetes keywords that JSON Schema does not know (jsonschema ignores unknown ones,
# but "nullable" and "format" need care, so strip the Kubernetes ones for clarity).
_K8S_KEYWORDS = ("x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
                 "x-kubernetes-list-map-keys", "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource")


# A copy of charts/gitlab-sts/crds/gitlabawsbindings.yaml shipped as package data (tests keep them equal).
PACKAGED_CRD = "gitlabawsbindings.crd.yaml"


def packaged_crd_text() -> str:
    """The GitLabAWSBinding CRD this package was built with, as YAML text."""
    return importlib.resources.files("gitlab_sts.core").joinpath(PACKAGED_CRD).read_text(encoding="utf-8")


def load_crd(path: Path | None = None) -> dict[str, Any]:
    """Read a CRD YAML file (default: the packaged GitLabAWSBinding CRD), raising ConfigError when it is not one."""
    where = path if path is not None else f"the packaged CRD ({PACKAGED_CRD})"
    try:
        doc = yaml.safe_load(path.read_text() if path is not None else packaged_crd_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read CRD: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        raise ConfigError(f"{where}: not a CustomResourceDefinition")
    return doc


def version_schema(crd: Mapping[str, Any], version: str | None = None) -> tuple[str, dict[str, Any]]:
    """The served version's name and its openAPIV3Schema (the storage version when none is named)."""
    versions = crd.get("spec", {}).get("versions", [])
    for v in versions:
        if (version is None and v.get("storage")) or v.get("name") == version:
            return str(v["name"]), dict(v["schema"]["openAPIV3Schema"])
    raise ConfigError(f"the CRD serves no version {version or '(storage)'}")


def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a structural OpenAPI v3 schema into plain JSON Schema (draft 7)."""
    out = copy.deepcopy(dict(schema))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                # kubectl's strict field validation (the default) refuses unknown fields.
                node.setdefault("additionalProperties", False)
            for k in _K8S_KEYWORDS:
                node.pop(k, None)
            node.pop("format", None)  # int64/date-time are informative for the API server too
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    return out


def _cel_errors(schema: Mapping[str, Any], value: Any, path: str, errors: list[str]) -> None:
    """Evaluate x-kubernetes-validations the way the API server does: `self` is the value at that node."""
    for rule in schema.get("x-kubernetes-validations", ()):
        source = rule["rule"]
        try:
            program = _CEL_ENV.program(_CEL_ENV.compile(source))
            result = program.evaluate({"self": json_to_cel(value)})
        except Exception as exc:  # celpy raises several types for missing members and bad overloads
            errors.append(f"{path or '(root)'}: rule {source!r} could not be evaluated: {exc}")
            continue
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path or '(root)'}: {rule.get('message') or 'failed rule ' + source}")
    if isinstance(value, Mapping):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _cel_errors(sub, value[name], f"{path}.{name}" if path else name, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            _cel_errors(schema["items"], item, f"{path}[{i}]", errors)


def validate_manifest(doc: Any, crd: Mapping[str, Any]) -> list[str]:
    """Check a manifest as the API server would for this CRD; returns problems as 'field: message' lines."""
    if not isinstance(doc, Mapping):
        return ["(root): a manifest must be a mapping"]
    names = crd.get("spec", {}).get("names", {})
    group = crd.get("spec", {}).get("group", "")
    problems: list[str] = []
    if doc.get("kind") != names.get("kind"):
        problems.append(f"kind: must be {names.get('kind')}")
    api_version = str(doc.get("apiVersion", ""))
    api_group, _, version = api_version.partition("/")
    if api_group != group or not version:
        problems.append(f"apiVersion: must be {group}/<version>")
        return problems
    try:
        _, schema = version_schema(crd, version)
    except ConfigError as exc:
        return [*problems, f"apiVersion: {exc}"]
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        problems.append("metadata.name: required")
        return problems
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    for err in sorted(validator.iter_errors(dict(doc)), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err.absolute_path)
        problems.append(f"{where.replace('.[', '[') or '(root)'}: {err.message}")
    if not problems:
        # The API server runs CEL rules only on a schema-valid object; so do we.
        _cel_errors(schema, dict(doc), "", problems)
    return problems
