"""The exchange pods follow their config objects through the API (KMock), with the mounted files as fallback.

Real gunicorn on loopback, real HTTP to KMock, the fake GitLab process: a binding applied through the API is
usable, and a deleted one refused, within 2 s; the pod's Lease carries the digest it serves; when the API
server goes away the pod keeps what it has and takes newer files from the volume.
"""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gitlab_sts.core.bindingdoc import configmap_payload, load_manifests
from gitlab_sts.core.bindings import CompiledBinding, compile_binding
from gitlab_sts.core.keys import KEYSET_FILE
from gitlab_sts.core.served import SERVED_ANNOTATION
from gitlab_sts.service.follow import (
    BINDINGS,
    KEYS,
    SETTINGS,
    FollowConfig,
    Follower,
    LocalCopy,
    digest_of,
)
from gitlab_sts.service.kubeapi import KubeError, object_path
from gitlab_sts.service.paths import ConfigPaths
from tests.service.harness import EXAMPLES, FakeGitLabProcess, Service, eventually, start_service
from tests.service.kmock_thread import KMockThread

NS = "gitlab-sts"
CM = "gitlab-sts-bindings"
LIMIT = 2.0  # seconds from the API server accepting a change to every worker serving it (issue #13)


def example_bindings() -> list[CompiledBinding]:
    return list(load_manifests(sorted(EXAMPLES.glob("*.yaml"))).bindings)


def bindings_configmap(bindings: list[CompiledBinding]) -> tuple[dict[str, Any], str]:
    data, binary, digest = configmap_payload(bindings)
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": CM, "namespace": NS, "annotations": {"gitlab-sts.io/sha256": digest}},
                            "data": data}
    if binary:
        body["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return body, digest


def put_bindings(kmock: KMockThread, bindings: list[CompiledBinding]) -> str:
    """Write the bindings ConfigMap as the operator does; returns the document digest."""
    api = kmock.api()
    body, digest = bindings_configmap(bindings)
    path = object_path("v1", "configmaps", NS, CM)
    try:
        api.request("GET", path)
    except KubeError as exc:
        if exc.status != 404:
            raise
        api.request("POST", object_path("v1", "configmaps", NS), body=body)
        return digest
    # Exactly one of the two keys (plain or gzip), as the operator's patch leaves it (null removes the other).
    patch = {"data": {"bindings.json": body["data"].get("bindings.json")},
             "binaryData": {"bindings.json.gz": body.get("binaryData", {}).get("bindings.json.gz")},
             "metadata": {"annotations": body["metadata"]["annotations"]}}
    api.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
    return digest


@pytest.fixture
def kmock() -> Iterator[KMockThread]:
    server = KMockThread().start()
    yield server
    server.stop()


def follow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kubeconfig: Path, pod: str = "pod-a") -> None:
    monkeypatch.setenv("GITLAB_STS_FOLLOW_API", "true")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("GITLAB_STS_NAMESPACE", NS)
    monkeypatch.setenv("GITLAB_STS_POD_NAME", pod)
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GITLAB_STS_LEASE_RENEW_SECONDS", "1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def staging(svc: Service) -> str:
    return svc.job_token(environment="staging", environment_protected="false")


def readyz(svc: Service) -> dict[str, Any]:
    return dict(requests.get(svc.url + "/readyz", timeout=10).json())


def lease_digests(kmock: KMockThread, pod: str = "pod-a") -> list[str]:
    try:
        lease = kmock.api().request("GET", object_path("coordination.k8s.io/v1", "leases", NS,
                                                       f"gitlab-sts-exchange-{pod}"))
    except KubeError:
        return []
    value = (lease.get("metadata") or {}).get("annotations", {}).get(SERVED_ANNOTATION, "")
    return [d for d in str(value).split(",") if d]


class Looper:
    """Exchange in a tight loop from a thread; record when each outcome was last and first seen."""

    def __init__(self, svc: Service, token: str) -> None:
        self.svc, self.token = svc, token
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": self.token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
        while not self._stop.is_set():
            status = session.post(self.svc.url + "/v1/token", data=form, timeout=15).status_code
            self.results.append((time.monotonic(), status))

    def __enter__(self) -> Looper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def last(self, status: int) -> float:
        return max(t for t, s in self.results if s == status)

    def first_after(self, status: int, since: float) -> float | None:
        return next((t for t, s in self.results if s == status and t >= since), None)


def test_watch_delivers_changes_revocation_and_lease(fake_gitlab: FakeGitLabProcess, kmock: KMockThread,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindings = example_bindings()
    put_bindings(kmock, bindings)
    empty = tmp_path / "no-bindings"
    empty.mkdir()
    follow_env(monkeypatch, tmp_path, kmock.kubeconfig(tmp_path / "kubeconfig"))
    # The volume holds no bindings at all: every binding served below came through the API.
    svc = start_service(tmp_path / "svc", fake_gitlab, bindings=empty)
    try:
        api = kmock.api()
        api.request("POST", object_path("v1", "secrets", NS), body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gitlab-sts-keys", "namespace": NS},
            "data": {KEYSET_FILE: base64.b64encode((svc.keys_dir / KEYSET_FILE).read_bytes()).decode()}})
        api.request("POST", object_path("v1", "configmaps", NS), body={
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gitlab-sts-settings", "namespace": NS},
            "data": {"settings.yaml": svc.settings_path.read_text()}})
        token = staging(svc)
        eventually(lambda: svc.exchange(token).status_code == 200, timeout=15)
        assert readyz(svc)["served"]["follow_api"] is True
        eventually(lambda: {k: v["source"] for k, v in readyz(svc)["served"]["sources"].items()}
                   == {"settings": "api", "bindings": "api", "keys": "api", "pinned": "api"})
        detail = readyz(svc)
        digest = detail["bindings_sha256"]
        eventually(lambda: lease_digests(kmock) == [digest])
        assert svc.metric("gitlab_sts_served_info", digest=digest, source="api") == 1

        staging_binding = next(b for b in bindings if b.name == "deploy-staging")
        others = [b for b in bindings if b is not staging_binding]
        revoked, applied = measure(kmock, svc, token, bindings, others, rounds=5)
        print(f"\n1 binding: delete->refused {summary(revoked)}; apply->usable {summary(applied)}")
        assert max(revoked) < LIMIT, revoked
        assert max(applied) < LIMIT, applied

        # A tightened guard in the settings ConfigMap stops the binding on every worker just as fast.
        guarded = svc.settings_path.read_text() + "guard:\n  - namespaces: [someone-else]\n"
        with Looper(svc, token) as loop:
            eventually(lambda: loop.first_after(200, time.monotonic() - 0.05) is not None)
            api.request("PATCH", object_path("v1", "configmaps", NS, "gitlab-sts-settings"),
                        body={"data": {"settings.yaml": guarded}}, content_type="application/merge-patch+json")
            accepted = time.monotonic()
            eventually(lambda: loop.first_after(403, accepted) is not None, timeout=10)
            time.sleep(LIMIT)  # any success after this point would be a worker still minting
        assert loop.last(200) - accepted < LIMIT
        assert loop.results[-1][1] == 403
    finally:
        svc.stop()


def measure(kmock: KMockThread, svc: Service, token: str, with_it: list[CompiledBinding],
            without: list[CompiledBinding], rounds: int) -> tuple[list[float], list[float]]:
    """Rounds of (delete, wait for the first refusal; apply, wait for the first success) under a tight loop.

    Delete: the time from the API accepting the new ConfigMap to the LAST success seen (each worker must have
    switched: the Lease lists one digest). Apply: to the first success.
    """
    revoked, applied = [], []
    with Looper(svc, token) as loop:
        for _ in range(rounds):
            eventually(lambda: loop.first_after(200, time.monotonic() - 0.05) is not None, timeout=15)
            new_digest = put_bindings(kmock, without)
            accepted = time.monotonic()
            eventually(lambda a=accepted: loop.first_after(403, a) is not None, timeout=15)
            eventually(lambda d=new_digest: lease_digests(kmock) == [d], timeout=15)
            revoked.append(loop.last(200) - accepted)
            put_bindings(kmock, with_it)
            accepted = time.monotonic()
            first = eventually(lambda a=accepted: loop.first_after(200, a), timeout=15)
            applied.append(first - accepted)
    return revoked, applied


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
            f"({len(ordered)} rounds)")


def filler(count: int) -> list[CompiledBinding]:
    """Bindings of other projects (what a busy cluster holds besides the one measured)."""
    return [compile_binding(f"team-{i % 50}", f"filler-{i:05d}", {
        "project": {"path": f"group-{i % 97}/project-{i}"}, "rules": {"refs": ["main"]},
        "aws": {"roleArn": f"arn:aws:iam::123456789012:role/r{i}"}}) for i in range(count)]


def test_revocation_with_10000_bindings(fake_gitlab: FakeGitLabProcess, kmock: KMockThread, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10,000 other bindings in the document (gzipped in binaryData) the 2 s still hold."""
    bindings = example_bindings()
    many = filler(10_000)
    staging_binding = next(b for b in bindings if b.name == "deploy-staging")
    with_it, without = [*many, *bindings], [*many, *(b for b in bindings if b is not staging_binding)]
    put_bindings(kmock, with_it)
    follow_env(monkeypatch, tmp_path, kmock.kubeconfig(tmp_path / "kubeconfig"))
    svc = start_service(tmp_path / "svc", fake_gitlab)
    try:
        token = staging(svc)
        eventually(lambda: readyz(svc)["bindings"] >= 10_000, timeout=60)
        revoked, applied = measure(kmock, svc, token, with_it, without, rounds=5)
        print(f"\n10,000 bindings: delete->refused {summary(revoked)}; apply->usable {summary(applied)}")
        assert max(revoked) < LIMIT, revoked
        assert max(applied) < LIMIT, applied
    finally:
        svc.stop()


def test_api_down_keeps_serving_and_takes_newer_volume_files(fake_gitlab: FakeGitLabProcess, kmock: KMockThread,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindings = example_bindings()
    staging_only = [b for b in bindings if b.name == "deploy-staging"]
    put_bindings(kmock, staging_only)
    follow_env(monkeypatch, tmp_path, kmock.kubeconfig(tmp_path / "kubeconfig"))
    volume = tmp_path / "volume-bindings"
    volume.mkdir()
    svc = start_service(tmp_path / "svc", fake_gitlab, bindings=volume)
    try:
        token = staging(svc)
        eventually(lambda: svc.exchange(token).status_code == 200, timeout=15)
        kmock.stop()  # the API server goes away
        eventually(lambda: readyz(svc)["served"]["sources"]["bindings"]["synced"] is False, timeout=15)
        assert svc.exchange(token).status_code == 200  # keeps what it last loaded
        # The kubelet (still syncing from its cache) brings a newer copy: the pod takes it.
        data, _, digest = configmap_payload([])
        staged = svc.bindings_dir / ".new"
        staged.write_text(data["bindings.json"])
        staged.replace(svc.bindings_dir / "bindings.json")
        eventually(lambda: svc.exchange(token).status_code == 403, timeout=10)
        eventually(lambda: readyz(svc)["bindings_sha256"] == digest)  # each worker (readyz reaches either)
        assert readyz(svc)["served"]["sources"]["bindings"]["source"] == "volume"
    finally:
        svc.stop()


def test_a_pod_starting_while_the_api_is_down_serves_the_volume(fake_gitlab: FakeGitLabProcess, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    down = KMockThread().start()
    kubeconfig = down.kubeconfig(tmp_path / "kubeconfig")
    down.stop()  # nothing listens there any more
    follow_env(monkeypatch, tmp_path, kubeconfig)
    svc = start_service(tmp_path / "svc", fake_gitlab)
    try:
        token = staging(svc)
        assert svc.exchange(token).status_code == 200
        (svc.bindings_dir / "deploy-staging.yaml").unlink()
        eventually(lambda: svc.exchange(token).status_code == 403, timeout=10)
        assert readyz(svc)["served"]["sources"]["bindings"]["source"] == "volume"
    finally:
        svc.stop()


# ---- the source rule, without processes


def test_volume_content_the_api_already_delivered_never_replaces_the_api_copy(tmp_path: Path) -> None:
    volume = ConfigPaths(settings=tmp_path / "vol/settings.yaml", bindings=tmp_path / "vol/bindings",
                         keys=tmp_path / "vol/keys", pinned=tmp_path / "vol/pinned")
    for d in (volume.bindings, volume.keys):
        d.mkdir(parents=True)
    volume.settings.write_text("old settings\n")
    (volume.bindings / "bindings.json").write_text("v1")
    local = LocalCopy(tmp_path / "local")
    assert local.seed(volume, marker="1") is True
    assert local.seed(volume, marker="1") is False  # once per server start
    follower = Follower(FollowConfig(namespace=NS), local, volume, api=None)
    follower.api_copy(BINDINGS, {"bindings.json": b"v2"}, "10")
    follower.api_copy(BINDINGS, {"bindings.json": b"v3"}, "11")
    assert (local.root / "bindings/bindings.json").read_bytes() == b"v3"
    follower.api_lost()
    # A lagging kubelet shows v2 (the API delivered it before): old news, v3 stays.
    (volume.bindings / "bindings.json").write_text("v2")
    follower.check_volume()
    assert (local.root / "bindings/bindings.json").read_bytes() == b"v3"
    # Content the API never delivered is newer than what the pod holds: taken.
    (volume.bindings / "bindings.json").write_text("v4")
    follower.check_volume()
    assert (local.root / "bindings/bindings.json").read_bytes() == b"v4"
    assert local.sources()[BINDINGS]["source"] == "volume"
    # While the watch is synced the API copy is authoritative, whatever the volume shows.
    follower.api_copy(BINDINGS, {"bindings.json": b"v5"}, "12")
    (volume.bindings / "bindings.json").write_text("v6")
    follower.check_volume()
    assert (local.root / "bindings/bindings.json").read_bytes() == b"v5"
    # A missing settings object leaves the volume as the source; a deleted bindings ConfigMap means none.
    follower.api_copy(SETTINGS, None, "13")
    assert not follower.synced(SETTINGS)
    assert (local.root / "settings/settings.yaml").read_text() == "old settings\n"
    follower.api_copy(BINDINGS, None, "14")
    assert list((local.root / "bindings").iterdir()) == []
    assert digest_of({}) == local.sources()[BINDINGS]["sha256"]
    assert not follower.synced(KEYS)


def test_served_reports_drop_dead_workers(tmp_path: Path) -> None:
    local = LocalCopy(tmp_path)
    local.report_served("a" * 64)
    (tmp_path / ".served" / "999999999").write_text("b" * 64)  # no such process
    assert local.served() == ["a" * 64]
    assert not (tmp_path / ".served" / "999999999").exists()


def test_local_copy_replaces_whole_inputs(tmp_path: Path) -> None:
    local = LocalCopy(tmp_path)
    local.write(BINDINGS, {"bindings.json.gz": b"gz"})
    local.write(BINDINGS, {"bindings.json": b"plain"})
    assert sorted(p.name for p in (tmp_path / BINDINGS).iterdir()) == ["bindings.json"]
    shutil.rmtree(tmp_path / BINDINGS)
    local.write(BINDINGS, {"../escape": b"x", "ok.json": b"{}"})
    assert sorted(p.name for p in (tmp_path / BINDINGS).iterdir()) == ["ok.json"]
    assert json.loads((tmp_path / BINDINGS / "ok.json").read_text()) == {}
