"""ConfigState reloads of the bindings document compile only what changed and end where a fresh start would."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from gitlab_sts.core.bindingdoc import DOC_FILE, DOC_FILE_GZ, DOC_KIND, normalised_spec
from gitlab_sts.core.bindings import API_VERSION, BindingIndex
from gitlab_sts.core.keys import KeyRing
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.state import ConfigState, Snapshot
from tests.service.harness import keyring_file, one_key_ring, settings_yaml

STS = "https://sts.example.com"
GITLAB = "https://gitlab.example.com"
OTHER = "https://gitlab.other.example.com"
ROLE = "arn:aws:iam::123456789012:role/deploy"
_NO_INDEX = BindingIndex((), default_issuer=None)


def entry(name: str, project: str = "platform/payments", **aws: Any) -> dict[str, Any]:
    """One document entry."""
    return {"namespace": "team-a", "name": name,
            "spec": {"project": {"path": project}, "rules": {"refs": ["main"]}, "aws": {"roleArn": ROLE, **aws}}}


def document(entries: list[dict[str, Any]]) -> bytes:
    """The document as the operator renders it."""
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    doc = {"apiVersion": API_VERSION, "kind": DOC_KIND, "bindings": entries,
           "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


BASE = [entry("a"), entry("b", "platform/web"), entry("bad", roleArn="nope"), entry("c", tokenLifetimeSeconds=900)]


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    """One key ring for the module (generating RSA keys is slow)."""
    return one_key_ring()


@pytest.fixture
def root(tmp_path: Path, ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> Path:
    """settings.yaml, keys/ and an empty bindings/ folder; last good copies under the test's folder."""
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "settings.yaml").write_text(settings_yaml(STS, GITLAB))
    keyring_file(tmp_path / "keys", ring)
    (tmp_path / "bindings").mkdir()
    return tmp_path


def write(root: Path, raw: bytes, name: str = DOC_FILE) -> None:
    """Replace the document atomically (as a ConfigMap volume update does)."""
    tmp = root / "bindings" / (name + ".tmp")
    tmp.write_bytes(gzip.compress(raw, mtime=0) if name == DOC_FILE_GZ else raw)
    tmp.replace(root / "bindings" / name)


def paths(root: Path) -> ConfigPaths:
    """The state's inputs."""
    return ConfigPaths(root / "settings.yaml", root / "bindings", root / "keys")


def view(snap: Snapshot) -> dict[str, Any]:
    """What requests see of the bindings."""
    assert snap.index is not None
    return {"bindings": [(b.key, normalised_spec(b)) for b in snap.index.bindings],
            "unresolved": [b.key for b in snap.index.unresolved], "rejected": snap.rejected,
            "digest": snap.bindings_digest, "errors": snap.errors}


@pytest.fixture
def state(root: Path) -> ConfigState:
    """A state loaded from BASE."""
    write(root, document(BASE))
    return ConfigState(paths(root))


def test_one_changed_binding_is_the_only_compile(root: Path, state: ConfigState, compiles: list[str]) -> None:
    before = {b.key: b for b in (state.current().index or _NO_INDEX).bindings}
    edited = [BASE[0], entry("b", "platform/web", sessionTags=["ref"]), *BASE[2:], entry("d")]
    write(root, document(edited))
    snap = state.reload(force=False)
    assert compiles == ["team-a/b", "team-a/d"]
    after = {b.key: b for b in (snap.index or _NO_INDEX).bindings}
    assert after["team-a/a"] is before["team-a/a"] and after["team-a/c"] is before["team-a/c"]
    assert after["team-a/b"].spec.aws.session_tags == ("ref",)
    assert [r.key for r in snap.rejected] == ["team-a/bad"]
    assert view(snap) == view(ConfigState(paths(root)).current())  # what a fresh start loads
    saved = (root / "state" / DOC_FILE).read_bytes()
    assert saved == document(edited)  # the last good copy is the new document, as read


def test_corrupt_document_keeps_the_last_good_then_recovers(root: Path, state: ConfigState,
                                                            compiles: list[str]) -> None:
    good = state.current()
    ok = REGISTRY.get_sample_value("gitlab_sts_config_reloads_total", {"file": "bindings", "result": "ok"}) or 0
    write(root, document(BASE)[:-20])
    broken = state.reload(force=False)
    assert broken.index is good.index and broken.bindings_digest == good.bindings_digest
    assert "not valid JSON" in broken.errors["bindings"]
    assert REGISTRY.get_sample_value("gitlab_sts_config_loaded", {"file": "bindings"}) == 0
    write(root, document([*BASE[:3], entry("c", tokenLifetimeSeconds=600)]))
    fixed = state.reload(force=False)
    assert compiles == ["team-a/c"]
    assert "bindings" not in fixed.errors
    assert REGISTRY.get_sample_value("gitlab_sts_config_loaded", {"file": "bindings"}) == 1
    after = REGISTRY.get_sample_value("gitlab_sts_config_reloads_total", {"file": "bindings", "result": "ok"})
    assert after == ok + 1
    assert view(fixed) == view(ConfigState(paths(root)).current())


def test_settings_change_reindexes_reused_bindings(root: Path, state: ConfigState, compiles: list[str]) -> None:
    # Two trusted GitLab instances: bindings without spec.issuer become unusable, without any recompiling.
    settings = yaml.safe_load(settings_yaml(STS, GITLAB))
    settings["gitlab"].append({"issuer": OTHER, "audiences": [STS]})
    (root / "settings.yaml").write_text(yaml.safe_dump(settings))
    snap = state.reload(force=False)
    assert compiles == []
    # core.admission's issuer rule: the three without spec.issuer are rejected, not indexed.
    assert snap.index is not None and not snap.index.unresolved
    assert sum("spec.issuer: required" in r.error for r in snap.rejected) == 3
    assert view(snap) == view(ConfigState(paths(root)).current())


def test_gzip_document_reloads_incrementally(root: Path, state: ConfigState, compiles: list[str]) -> None:
    (root / "bindings" / DOC_FILE).unlink()
    write(root, document(BASE), DOC_FILE_GZ)
    same = state.reload(force=False)
    assert compiles == []  # same content, now gzipped
    assert view(same) == view(ConfigState(paths(root)).current())
    compiles.clear()
    write(root, document([*BASE, entry("e")]), DOC_FILE_GZ)
    snap = state.reload(force=False)
    assert compiles == ["team-a/e"]
    assert view(snap) == view(ConfigState(paths(root)).current())


def test_force_reload_of_unchanged_files_compiles_nothing(state: ConfigState, compiles: list[str]) -> None:
    before = state.current()
    snap = state.reload(force=True)
    assert compiles == []
    assert view(snap) == view(before)
