"""service.gcpolicy: reloaded bindings are frozen out of full collections without leaking old snapshots."""

from __future__ import annotations

import gc
import hashlib
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts.core.bindingdoc import DOC_FILE, DOC_KIND
from gitlab_sts.core.bindings import API_VERSION, CompiledBinding
from gitlab_sts.service import gcpolicy
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.service.state import ConfigState
from tests.service.harness import keyring_file, one_key_ring, settings_yaml

STS = "https://sts.example.com"
GITLAB = "https://gitlab.example.com"
N = 300
CONDITIONS = ('claims.user_login != "renovate-bot"', '!has(claims.environment)',
              'claims.ref.startsWith("release/") || claims.ref == "main"')


def entry(i: int, version: str) -> dict[str, Any]:
    """A binding using every kind of compiled check (globs, equality, membership, access level, CEL)."""
    project = ({"path": f"group-{i % 7}/project-{i}"}, {"id": str(1000 + i)}, {"namespace": f"group-{i}"})[i % 3]
    rules: dict[str, Any] = {"refs": ["main", "release/*"], "refType": "branch", "protectedRef": True,
                             "environments": ["production", "staging-*"], "pipelineSources": ["push"],
                             "runnerIds": [i], "minAccessLevel": "developer", "condition": CONDITIONS[i % 3]}
    return {"namespace": f"team-{i % 5}", "name": f"binding-{i:04d}",
            "spec": {"project": project, "rules": rules,
                     "aws": {"roleArn": f"arn:aws:iam::123456789012:role/deploy-{i}{version}",
                             "sessionTags": ["project_path", "ref"], "sourceIdentity": "user_login"}}}


def document(changed: int, version: str) -> bytes:
    """N bindings, the first `changed` of them with a different role."""
    entries = [entry(i, version if i < changed else "") for i in range(N)]
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    doc = {"apiVersion": API_VERSION, "kind": DOC_KIND, "bindings": entries,
           "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write(root: Path, raw: bytes) -> None:
    """Replace the document atomically."""
    tmp = root / "bindings" / (DOC_FILE + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(root / "bindings" / DOC_FILE)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigState:
    """A state loaded with N bindings (policy off)."""
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "settings.yaml").write_text(settings_yaml(STS, GITLAB))
    keyring_file(tmp_path / "keys", one_key_ring())
    (tmp_path / "bindings").mkdir()
    write(tmp_path, document(0, ""))
    return ConfigState(ConfigPaths(tmp_path / "settings.yaml", tmp_path / "bindings", tmp_path / "keys"))


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """gcpolicy enabled for one test, freezing after every reload, and everything unfrozen afterwards."""
    assert gc.get_freeze_count() == 0, "something else froze objects"
    monkeypatch.setattr(gcpolicy, "REFREEZE_AT", 0)
    gcpolicy.enable()
    try:
        yield
    finally:
        gcpolicy.disable()
    assert gc.get_freeze_count() == 0


def reload_with(state: ConfigState, raw: bytes) -> list[CompiledBinding]:
    """Write a document, reload as the watcher does, return the bindings requests would see."""
    write(state.paths.bindings.parent, raw)
    snap = state.reload(force=False)
    assert snap.index is not None and len(snap.index) == N and not snap.rejected, snap.errors
    return list(snap.index.bindings)


def walked() -> set[int]:
    """ids of the objects a full collection walks (gc.get_objects() leaves out the frozen ones)."""
    return {id(o) for o in gc.get_objects()}


def test_compiled_bindings_form_no_garbage_cycles(state: ConfigState) -> None:
    # Freezing is safe only because a replaced snapshot is freed by reference counting alone: anything
    # frozen that becomes a garbage cycle is never freed.
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        reload_with(state, document(1, "-v2"))
        reload_with(state, document(N, "-v3"))
        reload_with(state, document(N, "-v4"))
        gc.collect()
        cyclic = [o for o in gc.garbage if isinstance(o, CompiledBinding)
                  or type(o).__module__.startswith(("gitlab_sts", "pydantic", "celpy"))
                  or getattr(o, "__module__", "").startswith("gitlab_sts")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cyclic == []


def test_policy_is_off_unless_enabled(state: ConfigState) -> None:
    before = gc.get_freeze_count()
    bindings = reload_with(state, document(N, "-v2"))
    assert gc.get_freeze_count() == before
    assert id(bindings[0].spec) in walked()


def test_reloaded_bindings_are_frozen_out_of_full_collections(state: ConfigState, policy: None) -> None:
    seen = walked()
    assert not any(id(b) in seen or id(b.spec) in seen for b in (state.current().index or ()).bindings)
    changed = reload_with(state, document(1, "-v2"))[0]
    assert changed.spec.aws.role_arn.endswith("-v2")
    everything = reload_with(state, document(N, "-v3"))
    seen = walked()
    for binding in [changed, *everything]:
        assert id(binding) not in seen and id(binding.spec) not in seen and id(binding.checks) not in seen
    assert len(seen) < N  # far fewer than the ~30 tracked objects each binding holds


def test_frozen_objects_stay_bounded_over_reloads(state: ConfigState, policy: None) -> None:
    # Replaced snapshots leave the permanent generation by reference counting: the frozen count returns to
    # the same level however many times every binding is recompiled (N * ~30 objects each time).
    counts = []
    for i in range(12):
        reload_with(state, document(N if i % 2 else 1, f"-v{i}"))
        counts.append(gc.get_freeze_count())
    assert max(counts[2:]) - min(counts[2:]) < 500, counts


def test_ordinary_edits_freeze_only_once_enough_was_recompiled(state: ConfigState, policy: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Each freeze may catch a few objects of requests in flight for good, so an edit of one binding (a
    # new index of ~2.5 objects per binding) does not freeze; recompiling them all (~60 each) does.
    monkeypatch.setattr(gcpolicy, "REFREEZE_AT", 10 * N)
    frozen = gc.get_freeze_count()
    one = reload_with(state, document(1, "-v2"))[0]
    assert gc.get_freeze_count() <= frozen and id(one.spec) in walked()  # not frozen, old one freed
    everything = reload_with(state, document(N, "-v3"))
    seen = walked()
    assert not any(id(b.spec) in seen for b in everything)
    assert len(seen) < 10 * N


def test_garbage_cycles_are_collected_not_frozen(state: ConfigState, policy: None) -> None:
    class Node:
        """A garbage cycle like those a request leaves behind."""

        other: object = None

    gc.disable()  # no automatic collection gets to the cycle before the reload's freeze
    try:
        node = Node()
        node.other = node
        gone = weakref.ref(node)
        del node
        reload_with(state, document(1, "-v2"))
    finally:
        gc.enable()
    assert gone() is None  # frozen instead, it would never be freed


def test_gunicorn_workers_turn_the_policy_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shipped gunicorn.conf.py is what enables the policy in a worker, once the app is loaded.
    import runpy

    from gitlab_sts.localserver import GUNICORN_CONF

    # Running the config sets up (and empties) the metrics folder: keep it off this process's environment.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    conf = runpy.run_path(str(GUNICORN_CONF))
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gcpolicy.disable()
    assert gc.get_freeze_count() == 0
