"""Generate charts/gitlab-sts/values.schema.json from values.yaml.

Each value's schema is inferred from its default (objects with defaults are closed: unknown keys are
refused, so a typo fails `helm install` instead of being ignored). Comment lines directly above a key
refine it:

  # @schema {"type": "integer", "minimum": 1}   replaces the inferred schema (no descent below the key)
  # @schema-from gitlab_sts.core.settings:Settings   the JSON schema of that pydantic model (refs inlined)

Usage: python tools/values_schema.py [--check]   (--check exits 1 when the checked-in file differs)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gitlab-sts"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


def schema_annotations(values_text: str) -> dict[tuple[str, ...], dict[str, Any]]:
    """The `@schema` / `@schema-from` annotations by key path (block-style mappings only)."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    stack: list[tuple[int, str]] = []
    pending: dict[str, Any] | None = None
    for lineno, line in enumerate(values_text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# @schema-from "):
            pending = from_model(stripped.removeprefix("# @schema-from ").strip())
            continue
        if stripped.startswith("# @schema "):
            try:
                pending = json.loads(stripped.removeprefix("# @schema "))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"values.yaml:{lineno}: bad @schema JSON: {exc}") from None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        match = KEY_LINE.match(line)
        if match is None:  # a list item or a continuation: annotations never apply there
            pending = None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            found[tuple(k for _, k in stack)] = pending
            pending = None
    return found


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = node["$ref"].removeprefix("#/$defs/")
            merged = {**_inline_refs(copy.deepcopy(defs[target]), defs),
                      **{k: v for k, v in node.items() if k != "$ref"}}
            return merged
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def from_model(spec: str) -> dict[str, Any]:
    """The validation JSON schema of a pydantic model (camelCase aliases), with every $ref inlined.

    `required` and `minItems` at the top level are dropped: the chart's validate helper reports a
    missing issuer or GitLab instance with a message that says what to set.
    """
    module, _, name = spec.partition(":")
    model = getattr(importlib.import_module(module), name)
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline_refs(raw, raw.get("$defs", {}))
    schema.pop("required", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("minItems", None)
    schema["description"] = f"{model.__doc__ or name} (schema of {spec})"
    return schema


def infer(value: Any, path: tuple[str, ...], notes: dict[tuple[str, ...], dict[str, Any]]) -> dict[str, Any]:
    """The schema of one value from its default, unless an annotation gives it."""
    if path in notes:
        return notes[path]
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        items = infer(value[0], (*path, "[]"), notes) if value else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if isinstance(value, dict):
        if not value:  # a free-form map: labels, annotations, selectors
            return {"type": "object"}
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: infer(v, (*path, k), notes) for k, v in value.items()},
        }
    raise SystemExit(f"values.yaml: {'.'.join(path)}: null defaults are not allowed (give a typed default)")


def generate(values_path: Path = CHART / "values.yaml") -> str:
    """The schema document, as the checked-in file holds it."""
    text = values_path.read_text()
    schema = infer(yaml.safe_load(text), (), schema_annotations(text))
    # Helm passes `global` to every chart, also when this one is a subchart.
    schema["properties"]["global"] = {"type": "object"}
    doc = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "gitlab-sts chart values", **schema}
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def documented() -> list[tuple[str, str]]:
    """(dotted path, description) of every value with a `# --` comment, in file order."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    out = []
    for i, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        block: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.insert(0, lines[j].strip())
            j -= 1
        starts = [n for n, text in enumerate(block) if text.startswith("# --")]
        if not starts:
            continue
        text = [t.removeprefix("# --").removeprefix("#").strip() for t in block[starts[-1]:]
                if not t.startswith("# @schema")]
        out.append((".".join(k for _, k in stack), " ".join(t for t in text if t)))
    return out


def documented_paths() -> list[str]:
    """The dotted paths of every documented value."""
    return [path for path, _ in documented()]


def readme_table() -> str:
    """The values table of charts/gitlab-sts/README.md."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = ["| value | default | description |", "|---|---|---|"]
    for path, text in documented():
        node: Any = values
        for part in path.split("."):
            node = node[part]
        default = json.dumps(node, separators=(", ", ": ")) if not isinstance(node, str) else json.dumps(node)
        if len(default) > 60:
            default = "see values.yaml"
        cell = text.replace("|", "\\|")
        rows.append(f"| `{path}` | `{default}` | {cell} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema, or with --check report whether the checked-in one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--readme-table", action="store_true", help="print the README's values table")
    args = parser.parse_args(argv)
    if args.readme_table:
        print(readme_table(), end="")
        return 0
    target = CHART / "values.schema.json"
    fresh = generate()
    if args.check:
        if not target.exists() or target.read_text() != fresh:
            print(f"{target} is out of date: run python tools/values_schema.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
