"""Generate N realistic GitLabAWSBinding manifests (plus the examples) for the scale benchmarks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from gitlab_sts.core.bindingdoc import DOC_FILE, load_bindings_dir, render_document

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "bindings"
# A few conditions shared by many bindings, as in a real fleet (teams copy them).
CONDITIONS = (
    'claims.user_login != "renovate-bot"',
    '!has(claims.environment)',
    'claims.pipeline_source in ["push", "web"]',
    'claims.ref.startsWith("release/") || claims.ref == "main"',
)


def manifest(i: int) -> dict[str, Any]:
    """The i-th generated binding: a mix of path, id and namespace selectors and rules."""
    kind = i % 10
    if kind < 6:
        project: dict[str, str] = {"path": f"group-{i % 97}/project-{i}"}
    elif kind < 9:
        project = {"id": str(100000 + i)}
    else:
        project = {"namespace": f"group-{i % 97}/sub-{i}"}
    rules: dict[str, Any] = {"refs": ["main", "release/*"], "refType": "branch", "protectedRef": True}
    if i % 3 == 0:
        rules["environments"] = ["production", "staging-*"]
    if i % 4 == 0:
        rules["condition"] = CONDITIONS[i % len(CONDITIONS)]
    return {
        "apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
        "metadata": {"name": f"binding-{i:05d}", "namespace": f"team-{i % 50}"},
        "spec": {"project": project, "rules": rules,
                 "aws": {"roleArn": f"arn:aws:iam::123456789012:role/deploy-{i}",
                         "sessionTags": ["project_path", "ref"], "sourceIdentity": "user_login"}},
    }


def write_manifests(directory: Path, n: int) -> Path:
    """n generated manifests, one file each, plus the example bindings."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(EXAMPLES, directory, dirs_exist_ok=True)
    for i in range(max(n - 4, 0)):
        (directory / f"binding-{i:05d}.yaml").write_text(yaml.safe_dump(manifest(i), sort_keys=False))
    return directory


def write_document(directory: Path, manifests: Path) -> Path:
    """The operator's bindings.json for the manifests in a folder."""
    loaded = load_bindings_dir(manifests)
    directory.mkdir(parents=True, exist_ok=True)
    raw, _ = render_document(loaded.bindings)
    (directory / DOC_FILE).write_bytes(raw)
    return directory


def edited_document(raw: bytes, count: int | None, suffix: str = "-v2") -> bytes:
    """The document with the role of its first `count` generated bindings renamed (all when None).

    Same namespaces and names, new content: what an operator writes after users edit `count` bindings.
    """
    doc = json.loads(raw)
    generated = [e for e in doc["bindings"] if e["name"].startswith("binding-")]
    for entry in generated[:count]:
        entry["spec"]["aws"]["roleArn"] += suffix
    canonical = json.dumps(doc["bindings"], sort_keys=True, separators=(",", ":"))
    doc["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
