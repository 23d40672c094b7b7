"""A folder of YAML manifests reloads incrementally: only new or changed files are parsed; same as a full load."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitlab_sts.core import bindingdoc
from gitlab_sts.core.bindingdoc import LoadedBindings, load_bindings_dir, normalised_spec
from gitlab_sts.core.errors import ConfigError


def manifest(name: str, role: str = "r", namespace: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"project": {"path": f"group/{name}"}, "rules": {"refs": ["main"]},
                     "aws": {"roleArn": f"arn:aws:iam::111122223333:role/{role}"}}}


BAD = {**manifest("bad"), "spec": {"project": {"path": "group/bad"}, "aws": {"roleArn": "not-an-arn"}}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}


def view(loaded: LoadedBindings) -> dict[str, Any]:
    """Everything a load's user sees (bindings by content, rejections, digest)."""
    return {"bindings": [(b.key, normalised_spec(b), len(b.checks)) for b in loaded.bindings],
            "rejected": loaded.rejected, "digest": loaded.digest, "source": loaded.source}


def write(folder: Path, name: str, *docs: dict[str, Any]) -> None:
    (folder / name).write_text(yaml.safe_dump_all(list(docs)))


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files parsed from here on."""
    seen: list[str] = []
    real = bindingdoc._file_outcomes

    def counting(name: str, text: bytes) -> Any:
        seen.append(name)
        return real(name, text)
    monkeypatch.setattr(bindingdoc, "_file_outcomes", counting)
    return seen


def test_only_changed_files_are_parsed(tmp_path: Path, parsed: list[str]) -> None:
    for i in range(5):
        write(tmp_path, f"b{i}.yaml", manifest(f"b{i}"))
    write(tmp_path, "mixed.yaml", NAMESPACE, manifest("m"), BAD)
    first = load_bindings_dir(tmp_path)
    assert len(parsed) == 6 and len(first.bindings) == 6 and len(first.rejected) == 1
    parsed.clear()
    write(tmp_path, "b1.yaml", manifest("b1", role="changed"))
    (tmp_path / "b2.yaml").unlink()
    write(tmp_path, "new.yaml", manifest("new"))
    again = load_bindings_dir(tmp_path, previous=first)
    assert sorted(parsed) == ["b1.yaml", "new.yaml"]
    assert view(again) == view(load_bindings_dir(tmp_path))
    unchanged = {b.key: b for b in first.bindings}
    # Unchanged files keep their compiled bindings (the same objects).
    assert all(b is unchanged[b.key] for b in again.bindings if b.key in ("team-a/b0", "team-a/m"))


def test_duplicates_across_files_are_decided_on_every_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", manifest("same", role="first"))
    first = load_bindings_dir(tmp_path)
    write(tmp_path, "b.yaml", manifest("same", role="second"))
    again = load_bindings_dir(tmp_path, previous=first)
    assert view(again) == view(load_bindings_dir(tmp_path))
    assert [r.error for r in again.rejected] == ["defined twice (again in b.yaml#0)"]
    (tmp_path / "a.yaml").unlink()
    third = load_bindings_dir(tmp_path, previous=again)
    assert [b.spec.aws.role_arn for b in third.bindings] == ["arn:aws:iam::111122223333:role/second"]
    assert third.rejected == ()


def test_a_broken_file_still_fails_the_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", manifest("a"))
    first = load_bindings_dir(tmp_path)
    (tmp_path / "b.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: not valid YAML"):
        load_bindings_dir(tmp_path, previous=first)


def test_a_renamed_file_is_parsed_again(tmp_path: Path, parsed: list[str]) -> None:
    # Rejection messages name the file (`name#index` for a nameless document), so outcomes are kept by name too.
    nameless = {**BAD, "metadata": {"namespace": "team-a"}}
    write(tmp_path, "a.yaml", nameless)
    first = load_bindings_dir(tmp_path)
    (tmp_path / "a.yaml").rename(tmp_path / "b.yaml")
    parsed.clear()
    again = load_bindings_dir(tmp_path, previous=first)
    assert parsed == ["b.yaml"]
    assert [r.key for r in again.rejected] == ["team-a/b.yaml#0"]


def test_random_edit_sequences_match_a_full_load(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    previous = None
    for _ in range(60):
        name = f"f{rng.randrange(8)}.yaml"
        action = rng.choice(["write", "write", "write", "delete", "bad", "duplicate", "multi"])
        if action == "delete":
            (tmp_path / name).unlink(missing_ok=True)
        elif action == "bad":
            write(tmp_path, name, BAD)
        elif action == "duplicate":
            write(tmp_path, name, manifest(f"b{rng.randrange(4)}", role=f"dup{rng.randrange(3)}"))
        elif action == "multi":
            write(tmp_path, name, NAMESPACE, manifest(f"m{rng.randrange(4)}"), manifest(f"b{rng.randrange(4)}"))
        else:
            write(tmp_path, name, manifest(f"b{rng.randrange(4)}", role=f"r{rng.randrange(3)}"))
        loaded = load_bindings_dir(tmp_path, previous=previous)
        assert view(loaded) == view(load_bindings_dir(tmp_path))
        previous = loaded
