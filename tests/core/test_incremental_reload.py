"""Incremental parse of the bindings document: reusing unchanged entries gives exactly what a full parse gives."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_sts.core import bindingdoc
from gitlab_sts.core.bindingdoc import (
    DOC_FILE,
    DOC_FILE_GZ,
    DOC_KIND,
    LoadedBindings,
    load_bindings_dir,
    normalised_spec,
    parse_document,
)
from gitlab_sts.core.bindings import API_VERSION, CompiledBinding
from gitlab_sts.core.errors import CompileError, ConfigError
from tests.core.conftest import ROLE, ROLE_B, base_spec, gitlab_claims

# Claims that exercise every kind of check (project, globs, equality, membership, access, CEL).
CLAIMS = (
    gitlab_claims(),
    gitlab_claims(ref="release/1", user_login="bot", pipeline_source="web"),
    gitlab_claims(project_path="platform/other", project_id="43", user_access_level="guest", ref_protected="false"),
)


def entry(name: str, namespace: str = "team-a", **sections: Any) -> dict[str, Any]:
    """One document entry."""
    return {"namespace": namespace, "name": name, "spec": base_spec(**sections)}


def document(entries: list[Any], *, sha: str | None = None, rendered: bool = True) -> bytes:
    """A document laid out as render_document writes it, or by hand (spaces, other key order)."""
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest() if sha is None else sha
    doc = {"apiVersion": API_VERSION, "kind": DOC_KIND, "sha256": digest, "bindings": entries}
    if rendered:
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(doc).encode()


def view(loaded: LoadedBindings) -> dict[str, Any]:
    """Everything observable about a load: bindings (spec and behaviour), rejections, digest, source, raw."""
    def binding(b: CompiledBinding) -> tuple[Any, ...]:
        return (b.key, normalised_spec(b), len(b.checks), tuple(b.evaluate(c) for c in CLAIMS))
    return {"bindings": [binding(b) for b in loaded.bindings], "rejected": loaded.rejected,
            "digest": loaded.digest, "source": loaded.source, "raw": loaded.raw}


BAD = entry("bad", aws={"roleArn": "not-an-arn"})
BASE = [
    entry("deploy", rules={"refs": ["main"], "condition": 'claims.user_login != "bot"'},
          aws={"sessionTags": ["ref"]}),
    entry("read", project={"id": "42"}, aws={"roleArn": ROLE_B}),
    entry("group", namespace="team-b", project={"namespace": "platform"}, rules={"minAccessLevel": "developer"}),
    BAD,
]


def _step(before: list[Any], after: list[Any], rendered: bool = True) -> tuple[LoadedBindings, LoadedBindings]:
    """(incremental, full) parse of `after`, the incremental one from the parse of `before`."""
    previous = parse_document(document(before), DOC_FILE)
    raw = document(after, rendered=rendered)
    return parse_document(raw, DOC_FILE, previous), parse_document(raw, DOC_FILE)


@pytest.mark.parametrize("after", [
    pytest.param(BASE + [entry("new", rules={"refs": ["release/*"]})], id="add"),
    pytest.param([BASE[0], entry("read", project={"id": "43"}, aws={"roleArn": ROLE}), *BASE[2:]], id="change"),
    pytest.param([BASE[0], *BASE[2:]], id="remove"),
    pytest.param(BASE[:3], id="remove-rejected"),
    pytest.param([entry("deploy", rules={"refs": ["["]}), *BASE[1:]], id="change-to-rejected"),
    pytest.param([*BASE[:3], entry("bad")], id="rejected-fixed"),
    pytest.param(BASE + [entry("bad2", project={})], id="add-rejected"),
    pytest.param(list(reversed(BASE)), id="reorder"),
    pytest.param([], id="empty"),
])
@pytest.mark.parametrize("rendered", [True, False], ids=["rendered", "by-hand"])
def test_incremental_equals_full(after: list[Any], rendered: bool) -> None:
    incremental, full = _step(BASE, after, rendered)
    assert view(incremental) == view(full)


def test_only_new_and_changed_entries_are_compiled(compiles: list[str]) -> None:
    previous = parse_document(document(BASE), DOC_FILE)
    assert sorted(set(compiles)) == ["team-a/bad", "team-a/deploy", "team-a/read", "team-b/group"]
    compiles.clear()
    changed = [BASE[0], entry("read", project={"id": "43"}), *BASE[2:], entry("new")]
    loaded = parse_document(document(changed), DOC_FILE, previous)
    assert compiles == ["team-a/read", "team-a/new"]
    # The unchanged bindings are the very same objects; the rejected entry keeps its error without a compile.
    same = {b.key: b for b in previous.bindings}
    assert loaded.bindings[0] is same["team-a/deploy"] and loaded.bindings[2] is same["team-b/group"]
    assert loaded.rejected == previous.rejected


def test_identical_bytes_reuse_the_whole_load(compiles: list[str]) -> None:
    raw = document(BASE)
    previous = parse_document(raw, DOC_FILE)
    compiles.clear()
    assert parse_document(raw, DOC_FILE, previous) is previous
    # The gzip copy of the same document only differs in its source name.
    again = parse_document(raw, DOC_FILE_GZ, previous)
    assert compiles == []
    assert view(again) == {**view(previous), "source": DOC_FILE_GZ}


def test_key_order_does_not_change_the_outcome() -> None:
    # Two unknown fields: pydantic names them in input order, so entries are compiled in canonical order.
    spec = base_spec(aws={"zeta": 1, "alpha": 2})
    forwards = {"namespace": "team-a", "name": "x", "spec": spec}
    backwards = {"spec": {k: dict(reversed(list(v.items()))) for k, v in reversed(list(spec.items()))},
                 "name": "x", "namespace": "team-a"}
    first = parse_document(document([forwards]), DOC_FILE)
    incremental = parse_document(document([backwards]), DOC_FILE, first)
    full = parse_document(document([backwards]), DOC_FILE)
    assert view(incremental) == view(full)
    assert incremental.rejected and incremental.rejected == first.rejected


def test_types_are_not_confused_with_equal_values() -> None:
    # In Python True == 1 and 1 == 1.0; the cache must not take one for the other.
    good = entry("x", rules={"protectedRef": True})
    coerced = entry("x", rules={"protectedRef": 1})
    lifetime = entry("y", aws={"tokenLifetimeSeconds": 900})
    as_float = entry("y", aws={"tokenLifetimeSeconds": 900.0})
    incremental, full = _step([good, lifetime], [coerced, as_float])
    assert view(incremental) == view(full)
    assert [r.key for r in incremental.rejected] == ["team-a/x", "team-a/y"]


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param(b"{", "not valid JSON", id="json"),
    pytest.param(document(BASE, sha="0" * 64), "content hash does not match", id="hash"),
    pytest.param(document([*BASE, 7]), r"bindings\[4\] is not an object", id="entry"),
    pytest.param(document([BASE[0], {"namespace": "team-a", "name": "read"}]), r"bindings\[1\] needs", id="fields"),
])
def test_corrupt_documents_still_fail_with_a_previous_load(raw: bytes, message: str) -> None:
    previous = parse_document(document(BASE), DOC_FILE)
    with pytest.raises(ConfigError, match=message):
        parse_document(raw, DOC_FILE, previous)


def _with_array(array: str, sha: str) -> bytes:
    """A document in render_document's framing around the given array text."""
    return f'{{"apiVersion":"{API_VERSION}","bindings":{array},"kind":"{DOC_KIND}","sha256":"{sha}"}}'.encode()


def _texts(entries: list[Any]) -> list[str]:
    return [json.dumps(e, sort_keys=True, separators=(",", ":")) for e in entries]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("raw", [
    pytest.param(lambda t: _with_array("[" + ",".join(t) + ",]", _sha("[" + ",".join(t) + "]")), id="trailing-comma"),
    pytest.param(lambda t: _with_array("[" + ", ".join(t) + "]", _sha("[" + ",".join(t) + "]")), id="spaces"),
    pytest.param(lambda t: _with_array("[" + ",".join(t) + "]]", _sha("[" + ",".join(t) + "]")), id="extra-bracket"),
    pytest.param(lambda t: _with_array("[,]", _sha("[]")), id="empty-slot"),
    pytest.param(lambda t: _with_array("[" + t[0] + "\xff]", _sha("[" + t[0] + "]")), id="garbage"),
    pytest.param(lambda t: _with_array("[[" + t[0] + "]", _sha("[" + t[0] + "]")), id="unbalanced"),
    pytest.param(lambda t: _with_array("[]", _sha("[]")), id="empty"),
    pytest.param(lambda t: _with_array("[" + t[0] + "]", _sha("[" + t[0] + "]"))[:-1], id="truncated"),
    pytest.param(lambda t: _with_array("[" + ",".join(t) + "]", _sha("[" + ",".join(t) + "]")).replace(
        b"team-a", rb"t\u0065am-a", 1), id="escaped"),
    pytest.param(lambda t: _with_array("[" + t[0] + "]", _sha("[" + t[0] + "]")).replace(b"team-a", b"team-\xff"),
                 id="not-utf-8"),
])
def test_framing_edge_cases_match_a_full_parse(raw: Callable[[list[str]], bytes]) -> None:
    data = raw(_texts(BASE))
    previous = parse_document(document(BASE), DOC_FILE)
    try:
        full: Any = view(parse_document(data, DOC_FILE))
    except ConfigError as exc:
        full = str(exc)
    try:
        incremental: Any = view(parse_document(data, DOC_FILE, previous))
    except ConfigError as exc:
        incremental = str(exc)
    assert incremental == full


def _rendered_with(entries: list[Any], texts: list[str]) -> bytes:
    """render_document's framing around entries written as the given texts, with the honest sha256."""
    return _with_array("[" + ",".join(texts) + "]", _sha("[" + ",".join(_texts(entries)) + "]"))


def test_an_entry_holding_the_entry_separator_is_split_correctly(compiles: list[str]) -> None:
    # An unknown field holding objects whose first key is "name": `,{"name":"` then occurs inside an
    # entry, so splitting there cuts it; the parse must notice and still equal a full parse.
    tricky = entry("tricky", aws={"extra": [{"a": 1}, {"name": "x", "spec": {}}]})
    assert ',{"name":"' in _texts([tricky])[0]
    previous = parse_document(document([*BASE, tricky]), DOC_FILE)
    compiles.clear()
    after = [*BASE[:3], tricky, entry("new")]
    incremental = parse_document(document(after), DOC_FILE, previous)
    assert compiles == ["team-a/new"]
    assert view(incremental) == view(parse_document(document(after), DOC_FILE))


def test_entries_with_other_key_orders_inside_the_rendered_framing() -> None:
    # The framing is render_document's but entries are written with keys in another order.
    previous = parse_document(document(BASE), DOC_FILE)
    reordered = [json.dumps(dict(reversed(list(e.items()))), separators=(",", ":")) for e in BASE]
    for texts in (reordered, [_texts(BASE)[0], *reordered[1:]], [*_texts(BASE)[:3], reordered[3]]):
        data = _rendered_with(BASE, texts)
        assert view(parse_document(data, DOC_FILE, previous)) == view(parse_document(data, DOC_FILE))


def test_non_canonical_entry_text_is_not_trusted_even_with_a_matching_hash() -> None:
    # An entry written with spaces, and a sha256 of exactly what is written: a full parse refuses it (the hash
    # covers the canonical text), so the incremental parse must not take the written text as canonical.
    loose = json.dumps(BASE[0], sort_keys=True)
    array = "[" + ",".join([loose, *_texts(BASE[1:])]) + "]"
    data = _with_array(array, _sha(array))
    previous = parse_document(document(BASE), DOC_FILE)
    with pytest.raises(ConfigError, match="content hash does not match"):
        parse_document(data, DOC_FILE)
    with pytest.raises(ConfigError, match="content hash does not match"):
        parse_document(data, DOC_FILE, previous)
    # With the honest hash (of the canonical text) both accept it, and nothing is recompiled needlessly.
    honest = _with_array(array, _sha("[" + ",".join(_texts(BASE)) + "]"))
    assert view(parse_document(honest, DOC_FILE, previous)) == view(parse_document(honest, DOC_FILE))


def test_previous_from_manifests_or_none_is_a_full_parse(tmp_path: Path) -> None:
    full = parse_document(document(BASE), DOC_FILE)
    manifests = LoadedBindings((), (), "x", "manifests")
    assert view(parse_document(document(BASE), DOC_FILE, manifests)) == view(full)
    assert view(parse_document(document(BASE), DOC_FILE, None)) == view(full)


def test_load_bindings_dir_passes_the_previous_load_on(tmp_path: Path, compiles: list[str]) -> None:
    (tmp_path / DOC_FILE_GZ).write_bytes(gzip.compress(document(BASE), mtime=0))
    previous = load_bindings_dir(tmp_path)
    compiles.clear()
    (tmp_path / DOC_FILE_GZ).write_bytes(gzip.compress(document([*BASE, entry("new")]), mtime=0))
    loaded = load_bindings_dir(tmp_path, previous)
    assert compiles == ["team-a/new"]
    assert view(loaded) == view(load_bindings_dir(tmp_path))
    assert loaded.source == DOC_FILE_GZ


# A pool of entries: several versions (valid and not) of a few names, so random documents add, change,
# remove, duplicate and reject entries between two parses.
POOL: tuple[dict[str, Any], ...] = (
    entry("a"), entry("a", rules={"refs": ["main", "release/*"]}), entry("a", rules={"refs": []}),
    entry("b", project={"id": "42"}), entry("b", project={"id": "42"}, rules={"condition": "claims.ref == 'main'"}),
    entry("b", rules={"condition": "claims.ref =="}), entry("c", namespace="team-b", project={"namespace": "platform"}),
    entry("c", namespace="team-b", aws={"sessionTags": ["ref", "ref"]}), entry("d", rules={"protectedRef": True}),
    entry("d", rules={"protectedRef": 1}), entry("d", aws={"tokenLifetimeSeconds": 900}),
    entry("d", aws={"tokenLifetimeSeconds": 900.0}), entry("BAD NAME"), entry("e", rules={"minAccessLevel": "owner"}),
)
documents = st.lists(st.sampled_from(POOL), max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(documents, st.booleans()), min_size=2, max_size=5))
def test_any_sequence_of_reloads_equals_full_parses(versions: list[tuple[list[dict[str, Any]], bool]]) -> None:
    previous: LoadedBindings | None = None
    for entries, rendered in versions:
        raw = document(entries, rendered=rendered)
        incremental = parse_document(raw, DOC_FILE, previous)
        assert view(incremental) == view(parse_document(raw, DOC_FILE))
        previous = incremental


def test_compile_error_is_what_the_rejection_says() -> None:
    # The rejected error text is the CompileError's, as in a full parse.
    loaded = parse_document(document([BAD]), DOC_FILE)
    with pytest.raises(CompileError) as exc:
        bindingdoc.compile_binding("team-a", "bad", BAD["spec"])
    assert loaded.rejected[0].error == str(exc.value)

