"""The bindings document (operator -> service) and the manifests folder (gitlab-sts serve/check)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts.core import bindingdoc
from gitlab_sts.core.bindingdoc import (
    DOC_FILE,
    DOC_FILE_GZ,
    DOC_KIND,
    configmap_payload,
    load_bindings_dir,
    load_manifests,
    parse_document,
    render_document,
)
from gitlab_sts.core.bindings import API_VERSION, KIND, CompiledBinding, compile_binding
from gitlab_sts.core.errors import ConfigError
from tests.core.conftest import DEEP_JSON, DEEP_YAML, ROLE, ROLE_B, base_spec, compile_spec


def _bindings() -> list[CompiledBinding]:
    return [
        compile_spec("deploy", "team-a", rules={"refs": ["main"], "condition": 'claims.user_login != "bot"'},
                     aws={"sessionTags": ["ref", "project_path"], "transitiveTags": ["ref"]}),
        compile_spec("read", "team-a", project={"id": "42"}, aws={"roleArn": ROLE_B}),
        compile_spec("deploy", "team-b", project={"namespace": "platform"}, rules={"minAccessLevel": "developer"}),
        compile_spec("zz", "team-c"),
    ]


def test_render_is_deterministic_under_reordering() -> None:
    bindings = _bindings()
    raw, digest = render_document(bindings)
    for seed in range(5):
        shuffled = bindings[:]
        random.Random(seed).shuffle(shuffled)
        assert render_document(shuffled) == (raw, digest)


def test_render_ignores_spec_key_order() -> None:
    spec = base_spec(rules={"refs": ["main"], "refType": "branch"}, aws={"sessionTags": ["ref"]})
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v)
                 for k, v in reversed(list(spec.items()))}
    a = render_document([compile_binding("team-a", "x", spec)])
    b = render_document([compile_binding("team-a", "x", reordered)])
    assert a == b


def test_digest_changes_with_content() -> None:
    _, one = render_document([compile_spec(rules={"refs": ["main"]})])
    _, two = render_document([compile_spec(rules={"refs": ["main", "dev"]})])
    _, three = render_document([compile_spec("other", rules={"refs": ["main"]})])
    assert len({one, two, three}) == 3


def test_document_shape() -> None:
    raw, digest = render_document(_bindings())
    doc = json.loads(raw)
    assert doc["apiVersion"] == API_VERSION and doc["kind"] == DOC_KIND and doc["sha256"] == digest
    assert [(e["namespace"], e["name"]) for e in doc["bindings"]] == [
        ("team-a", "deploy"), ("team-a", "read"), ("team-b", "deploy"), ("team-c", "zz")]
    first = doc["bindings"][0]["spec"]
    assert first["aws"] == {"roleArn": ROLE, "sessionTags": ["ref", "project_path"], "transitiveTags": ["ref"]}
    assert first["rules"] == {"refs": ["main"], "condition": 'claims.user_login != "bot"'}


def test_round_trip() -> None:
    bindings = _bindings()
    raw, digest = render_document(bindings)
    loaded = parse_document(raw, DOC_FILE)
    assert loaded.digest == digest and loaded.rejected == () and loaded.source == DOC_FILE
    assert [(b.key, b.spec) for b in loaded.bindings] == [(b.key, b.spec) for b in sorted(bindings,
                                                                                          key=lambda b: b.key)]
    assert render_document(loaded.bindings) == (raw, digest)


def _doc() -> dict[str, Any]:
    raw, _ = render_document(_bindings())
    data: dict[str, Any] = json.loads(raw)
    return data


def _rehash(doc: dict[str, Any]) -> bytes:
    canonical = json.dumps(doc["bindings"], sort_keys=True, separators=(",", ":"))
    doc["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(doc).encode()


def _tamper_role(doc: dict[str, Any]) -> None:
    doc["bindings"][1]["spec"]["aws"]["roleArn"] = ROLE


def _tamper_hash(doc: dict[str, Any]) -> None:
    doc["sha256"] = "0" * 64


def _drop_binding(doc: dict[str, Any]) -> None:
    doc["bindings"].pop()


def _drop_hash(doc: dict[str, Any]) -> None:
    del doc["sha256"]


@pytest.mark.parametrize("tamper", [_tamper_role, _tamper_hash, _drop_binding, _drop_hash],
                         ids=["role-edited", "hash-edited", "binding-removed", "hash-removed"])
def test_tampered_document_refused(tamper: Any) -> None:
    doc = _doc()
    tamper(doc)
    with pytest.raises(ConfigError, match="content hash does not match"):
        parse_document(json.dumps(doc).encode(), DOC_FILE)


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"kind": "GitLabAWSBindingSet", "bindings": [', "not valid JSON"),
    (b"[" * DEEP_JSON + b"]" * DEEP_JSON, "not valid JSON"),
    (b"[]", f"not a {DOC_KIND} document"),
    (b'{"kind": "Other", "bindings": []}', f"not a {DOC_KIND} document"),
    (b'{"kind": "GitLabAWSBindingSet", "bindings": {}}', f"not a {DOC_KIND} document"),
], ids=["empty", "binary", "truncated", "deeply-nested", "list", "wrong-kind", "bindings-object"])
def test_unparseable_documents(raw: bytes, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_document(raw, DOC_FILE)


def test_truncated_render_refused() -> None:
    raw, _ = render_document(_bindings())
    with pytest.raises(ConfigError, match=DOC_FILE):
        parse_document(raw[: len(raw) // 2], DOC_FILE)


@pytest.mark.parametrize(("entry", "words"), [
    ("x", "bindings[0] is not an object"),
    ({"namespace": "a", "spec": {}}, "bindings[0] needs namespace, name and spec"),
    ({"namespace": "a", "name": "b", "spec": []}, "bindings[0] needs namespace, name and spec"),
], ids=["string", "no-name", "spec-list"])
def test_bad_entries_with_valid_hash(entry: Any, words: str) -> None:
    doc = {"apiVersion": API_VERSION, "kind": DOC_KIND, "bindings": [entry]}
    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_document(_rehash(doc), DOC_FILE)


def test_entry_that_no_longer_compiles_is_rejected_not_fatal() -> None:
    doc = _doc()
    doc["bindings"][0]["spec"]["rules"]["refs"] = []
    loaded = parse_document(_rehash(doc), DOC_FILE)
    assert [r.key for r in loaded.rejected] == ["team-a/deploy"]
    assert "spec.rules.refs" in loaded.rejected[0].error
    assert len(loaded.bindings) == 3


def test_configmap_payload_small_is_plain() -> None:
    data, binary, digest = configmap_payload(_bindings())
    assert binary == {} and list(data) == [DOC_FILE]
    assert (data[DOC_FILE].encode(), digest) == render_document(_bindings())


def test_gzip_threshold_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, digest = render_document(_bindings())
    monkeypatch.setattr(bindingdoc, "GZIP_THRESHOLD", len(raw))
    data, binary, _ = configmap_payload(_bindings())
    assert list(data) == [DOC_FILE] and binary == {}
    monkeypatch.setattr(bindingdoc, "GZIP_THRESHOLD", len(raw) - 1)
    data, binary, gz_digest = configmap_payload(_bindings())
    assert data == {} and list(binary) == [DOC_FILE_GZ]
    assert gz_digest == digest
    assert gzip.decompress(binary[DOC_FILE_GZ]) == raw
    # Deterministic bytes, so an unchanged set never rewrites the ConfigMap.
    assert configmap_payload(list(reversed(_bindings())))[1] == binary


def test_default_threshold_fits_a_configmap() -> None:
    assert 512 * 1024 <= bindingdoc.GZIP_THRESHOLD < 1024 * 1024


# ---------------------------------------------------------------- folders


def _write_doc(tmp_path: Path, gz: bool) -> str:
    data, binary, digest = configmap_payload(_bindings())
    raw = data[DOC_FILE].encode()
    if gz:
        (tmp_path / DOC_FILE_GZ).write_bytes(gzip.compress(raw))
    else:
        (tmp_path / DOC_FILE).write_bytes(raw)
    return digest


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_load_dir_reads_the_document(tmp_path: Path, gz: bool) -> None:
    digest = _write_doc(tmp_path, gz)
    (tmp_path / "ignored.yaml").write_text("kind: GitLabAWSBinding\n")
    loaded = load_bindings_dir(tmp_path)
    assert loaded.digest == digest and len(loaded.bindings) == 4
    assert loaded.source == (DOC_FILE_GZ if gz else DOC_FILE)


def test_gzip_wins_over_plain(tmp_path: Path) -> None:
    _write_doc(tmp_path, gz=True)
    (tmp_path / DOC_FILE).write_text("not json")
    assert load_bindings_dir(tmp_path).source == DOC_FILE_GZ


def _corrupt_deflate() -> bytes:
    good = bytearray(gzip.compress(b'{"kind": "x"}' * 50, mtime=0))
    good[10] ^= 0xFF  # first byte of the deflate stream (past the 10-byte header): zlib.error, not OSError
    return bytes(good)


@pytest.mark.parametrize("payload", [
    b"not gzip at all",
    gzip.compress(b"{}" * 100)[:20],
    b"",
    _corrupt_deflate(),
], ids=["bad-magic", "truncated", "empty", "corrupt-stream"])
def test_bad_gzip_is_a_config_error(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / DOC_FILE_GZ).write_bytes(payload)
    with pytest.raises(ConfigError, match=DOC_FILE_GZ):
        load_bindings_dir(tmp_path)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_bindings_dir(tmp_path / "nope")


def _manifest(name: str, namespace: str = "team-a", **spec_sections: Any) -> str:
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
           "spec": base_spec(**spec_sections)}
    return json.dumps(doc)  # JSON is YAML


def test_manifests_folder(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("\n---\n".join([
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}",
        _manifest("deploy"),
        "",
        _manifest("read", aws={"roleArn": ROLE_B}),
    ]))
    (tmp_path / "b.yml").write_text(_manifest("deploy", "team-b"))
    (tmp_path / "c.yaml").write_text(_manifest("deploy"))  # duplicate of a.yaml#1
    (tmp_path / "d.yaml").write_text(_manifest("broken", rules={"refs": []}))
    (tmp_path / "e.yaml").write_text("- just\n- a list\n---\n42\n")
    (tmp_path / "notes.txt").write_text(_manifest("ignored"))
    loaded = load_bindings_dir(tmp_path)
    assert sorted(b.key for b in loaded.bindings) == ["team-a/deploy", "team-a/read", "team-b/deploy"]
    rejected = {r.key: r.error for r in loaded.rejected}
    assert set(rejected) == {"team-a/deploy", "team-a/broken"}
    assert "defined twice" in rejected["team-a/deploy"] and "c.yaml" in rejected["team-a/deploy"]
    assert "spec.rules.refs" in rejected["team-a/broken"]
    assert loaded.source == "manifests"
    # The first definition (by file name) wins.
    deploy = next(b for b in loaded.bindings if b.key == "team-a/deploy")
    assert deploy.spec.aws.role_arn == ROLE


def test_manifest_without_metadata_is_rejected_with_a_key(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(f"apiVersion: {API_VERSION}\nkind: {KIND}\nspec: {{}}\n")
    loaded = load_manifests([tmp_path / "a.yaml"])
    assert loaded.bindings == ()
    assert len(loaded.rejected) == 1 and "metadata.name" in loaded.rejected[0].error


def test_manifests_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(_manifest("deploy"))
    first = load_manifests([tmp_path / "a.yaml"]).digest
    assert load_manifests([tmp_path / "a.yaml"]).digest == first
    (tmp_path / "a.yaml").write_text(_manifest("deploy", rules={"refs": ["main"]}))
    assert load_manifests([tmp_path / "a.yaml"]).digest != first


@pytest.mark.parametrize("text", ["kind: [unclosed", "a: b\n c: d\n", b"kind: \xff\x80",
                                  "kind: " + "[" * DEEP_YAML + "]" * DEEP_YAML],
                         ids=["unclosed", "bad-indent", "not-utf8", "deeply-nested"])
def test_yaml_error_is_a_config_error(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_bindings_dir(tmp_path)


def test_empty_folder_has_no_bindings(tmp_path: Path) -> None:
    loaded = load_bindings_dir(tmp_path)
    assert loaded.bindings == () and loaded.rejected == ()
