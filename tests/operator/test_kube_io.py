"""The operator's Kubernetes I/O over real HTTP against KMock: ConfigMap, status, events, keys Secret."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_helpers import GUARDED_YAML, es256, manifest, settings, spec

from gitlab_sts.core.bindingdoc import DOC_FILE, DOC_FILE_GZ, GZIP_THRESHOLD, parse_document
from gitlab_sts.core.keys import KEYSET_FILE, parse_keyring
from gitlab_sts.operator import metrics
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.configsync import DIGEST_ANNOTATION
from gitlab_sts.operator.keyrotation import CONFLICT, CORRUPTED, CREATED, ROTATED, UNCHANGED, rotate_once
from gitlab_sts.operator.keyrotation import STATUS_KEY as KEYS_STATUS
from gitlab_sts.operator.kube import ApiError, Endpoint, KubeClient, path_for
from gitlab_sts.operator.runtime import Runtime, build_runtime

API = "gitlab-sts.io/v1alpha1"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-bindings")
SECRET = path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")


def runtime_for(k8s: Any, text: str | None = None, **cfg: Any) -> Runtime:
    conf = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0, **cfg)
    return build_runtime(conf, settings(text) if text else settings(), Endpoint(server=str(k8s.server.url)),
                         clock=lambda: NOW, new_key=es256)


async def put_binding(client: KubeClient, ns: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return await client.create(path_for(API, "gitlabawsbindings", ns), manifest(ns, name, body))


async def fetch_binding(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return await client.get(path_for(API, "gitlabawsbindings", ns, name))


async def config_doc(client: KubeClient) -> dict[str, Any]:
    cm = await client.get(CM)
    if DOC_FILE_GZ in (cm.get("binaryData") or {}):
        assert DOC_FILE not in (cm.get("data") or {})
        return json.loads(gzip.decompress(base64.b64decode(cm["binaryData"][DOC_FILE_GZ])))
    assert DOC_FILE_GZ not in (cm.get("binaryData") or {})
    return json.loads(cm["data"][DOC_FILE])


def events(k8s: Any) -> list[dict[str, Any]]:
    return [obj.raw for (res, _ns, _name), obj in k8s.objects.items() if res.plural == "events" and not obj.deleted]


def names(doc: dict[str, Any]) -> list[str]:
    return [f"{b['namespace']}/{b['name']}" for b in doc["bindings"]]


@pytest.mark.asyncio
async def test_startup_writes_only_valid_bindings_and_statuses(k8s: Any, client: KubeClient) -> None:
    await put_binding(client, "team-a", "good")
    await put_binding(client, "team-a", "bad", spec(project={"path": "a/b", "id": "12"}))
    rt = runtime_for(k8s)
    await rt.start(loops=False)
    assert await rt.writer.flush()
    doc = await config_doc(client)
    assert names(doc) == ["team-a/good"]
    parse_document(json.dumps(doc).encode(), "cm")  # the service can read it (hash checks out)
    cm = await client.get(CM)
    assert cm["metadata"]["annotations"][DIGEST_ANNOTATION] == doc["sha256"]

    for name in ("good", "bad"):
        await rt.reconciler.on_event(None, await fetch_binding(client, "team-a", name))
    good = (await fetch_binding(client, "team-a", "good"))["status"]
    assert good["conditions"][0]["status"] == "True"
    assert good["subject"] == "system:gitlabawsbinding:team-a:good"
    assert good["trustPolicy"]["Statement"][0]["Condition"]["StringEquals"]["sts.example.com:sub"] == good["subject"]
    bad = (await fetch_binding(client, "team-a", "bad"))["status"]
    assert bad["conditions"][0]["status"] == "False"
    assert bad["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.project" in bad["conditions"][0]["message"]
    assert "trustPolicy" not in bad
    posted = events(k8s)
    assert len(posted) == 1
    assert posted[0]["involvedObject"]["name"] == "bad"
    assert posted[0]["type"] == "Warning"
    await rt.stop()


@pytest.mark.asyncio
async def test_repeated_events_make_no_api_calls(k8s: Any, client: KubeClient) -> None:
    await put_binding(client, "team-a", "bad", spec(aws={"roleArn": "nope"}))
    rt = runtime_for(k8s)
    await rt.start(loops=False)
    await rt.reconciler.on_event("ADDED", await fetch_binding(client, "team-a", "bad"))
    before = rt.client.calls
    version = rt.memo.version
    # The status patch echoes back as MODIFIED: nothing to do, no event spam, config untouched.
    for _ in range(3):
        await rt.reconciler.on_event("MODIFIED", await fetch_binding(client, "team-a", "bad"))
    assert rt.client.calls == before
    assert rt.memo.version == version
    await rt.stop()


@pytest.mark.asyncio
async def test_create_update_delete_converge(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    await rt.start(loops=False)
    await rt.writer.flush()
    assert names(await config_doc(client)) == []
    obj = await put_binding(client, "team-b", "one")
    await rt.reconciler.on_event("ADDED", obj)
    await rt.writer.flush()
    assert names(await config_doc(client)) == ["team-b/one"]

    # Update to an invalid spec: it leaves the config, status says why.
    await client.merge_patch(path_for(API, "gitlabawsbindings", "team-b", "one"),
                             {"metadata": {"generation": 2}, "spec": {"aws": {"transitiveTags": ["ref"]}}})
    await rt.reconciler.on_event("MODIFIED", await fetch_binding(client, "team-b", "one"))
    await rt.writer.flush()
    assert names(await config_doc(client)) == []
    status = (await fetch_binding(client, "team-b", "one"))["status"]
    assert status["observedGeneration"] == 2
    assert "spec.aws.transitiveTags[0]" in status["conditions"][0]["message"]

    # Fix it, then delete: back in, then out.
    await client.merge_patch(path_for(API, "gitlabawsbindings", "team-b", "one"),
                             {"metadata": {"generation": 3}, "spec": {"aws": {"transitiveTags": None}}})
    obj = await fetch_binding(client, "team-b", "one")
    await rt.reconciler.on_event("MODIFIED", obj)
    await rt.writer.flush()
    assert names(await config_doc(client)) == ["team-b/one"]
    assert obj["status"]["conditions"][0]["status"] == "False"  # status as read before this event's patch
    assert (await fetch_binding(client, "team-b", "one"))["status"]["conditions"][0]["status"] == "True"
    await client.request("DELETE", path_for(API, "gitlabawsbindings", "team-b", "one"))
    await rt.reconciler.on_event("DELETED", obj)
    assert await rt.writer.flush()
    assert names(await config_doc(client)) == []
    await rt.stop()


@pytest.mark.asyncio
async def test_terminating_binding_leaves_config_at_once(k8s: Any, client: KubeClient) -> None:
    obj = await put_binding(client, "team-a", "x")
    rt = runtime_for(k8s)
    await rt.start(loops=False)
    await rt.writer.flush()
    obj["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"  # held by someone else's finalizer
    await rt.reconciler.on_event("MODIFIED", obj)
    await rt.writer.flush()
    assert names(await config_doc(client)) == []
    await rt.stop()


@pytest.mark.asyncio
async def test_guard_keeps_binding_out_of_config(k8s: Any, client: KubeClient) -> None:
    await put_binding(client, "team-a", "ok")
    await put_binding(client, "team-a", "other-account", spec(aws={"roleArn": "arn:aws:iam::999999999999:role/x"}))
    await put_binding(client, "sandbox", "anything")
    rt = runtime_for(k8s, GUARDED_YAML)
    await rt.start(loops=False)
    await rt.writer.flush()
    assert names(await config_doc(client)) == ["team-a/ok"]
    for ns, name in (("team-a", "other-account"), ("sandbox", "anything")):
        await rt.reconciler.on_event(None, await fetch_binding(client, ns, name))
        cond = (await fetch_binding(client, ns, name))["status"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "Forbidden")
        assert cond["message"].startswith("spec.aws.roleArn: ")
    await rt.stop()


@pytest.mark.asyncio
async def test_watch_namespaces_limit_the_listing(k8s: Any, client: KubeClient) -> None:
    await put_binding(client, "team-a", "a")
    await put_binding(client, "team-b", "b")
    rt = runtime_for(k8s, watch_namespaces=("team-b",))
    await rt.start(loops=False)
    await rt.writer.flush()
    assert names(await config_doc(client)) == ["team-b/b"]
    await rt.stop()


@pytest.mark.asyncio
async def test_large_config_is_gzipped_and_switches_back(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    await rt.start(loops=False)
    long_refs = [f"release/{'x' * 900}-{i}" for i in range(60)]
    for i in range(int(GZIP_THRESHOLD / (60 * 900)) + 2):
        await rt.reconciler.on_event("ADDED", manifest("team-a", f"big-{i:03d}", spec(rules={"refs": long_refs})))
    await rt.writer.flush()
    cm = await client.get(CM)
    assert set(cm.get("binaryData") or {}) == {DOC_FILE_GZ}
    assert not (cm.get("data") or {})
    assert len((await config_doc(client))["bindings"]) == len(rt.memo)
    for key in list(rt.memo._entries):
        await rt.reconciler.on_event("DELETED", manifest(*key))
    await rt.writer.flush()
    cm = await client.get(CM)
    assert set(cm.get("data") or {}) == {DOC_FILE}
    assert not (cm.get("binaryData") or {})
    await rt.stop()


@pytest.mark.asyncio
async def test_writer_does_not_write_before_the_first_listing(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    await rt.reconciler.on_event("ADDED", manifest("team-a", "early"))
    assert not await rt.writer.flush()
    assert await client.get_or_none(CM) is None
    await rt.client.close()


@pytest.mark.asyncio
async def test_conditioned_patch_conflicts(k8s: Any, client: KubeClient) -> None:
    await client.create(path_for("v1", "configmaps", "gitlab-sts"),
                        {"metadata": {"name": "gitlab-sts-bindings", "namespace": "gitlab-sts"}, "data": {}})
    cm = await client.get(CM)
    await client.merge_patch(CM, {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                                  "data": {"a": "1"}})
    with pytest.raises(ApiError) as err:
        await client.merge_patch(CM, {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                                      "data": {"a": "2"}})
    assert err.value.status == 409


@pytest.mark.asyncio
async def test_keys_secret_created_then_rotated_and_idempotent(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    assert (await rt.check_keys()).result == CREATED
    secret = await client.get(SECRET)
    ring = parse_keyring(base64.b64decode(secret["data"][KEYSET_FILE]).decode())
    assert ring.signing_key(NOW) is not None
    assert len(ring.keys) == 2  # one signing, one published ahead
    assert (await rt.check_keys()).result == UNCHANGED
    # A week and a day later: the successor signs, a new one is added ahead.
    later = NOW + timedelta(days=8)
    out = await rotate_once(client, "gitlab-sts", "gitlab-sts-keys", rt.policy, later, es256)
    assert out.result == ROTATED and out.plan is not None and out.plan.added
    ring2 = parse_keyring(base64.b64decode((await client.get(SECRET))["data"][KEYSET_FILE]).decode())
    assert ring2.signing_key(later) is not None
    gone = {k.kid for k in ring.keys} - {k.kid for k in ring2.keys}
    # Only the first key went, and only because it stopped verifying (retired + overlap) before `later`.
    assert gone == {ring.keys[0].kid}
    assert ring.keys[0].remove_at <= later
    sample = metrics.REGISTRY.get_sample_value("gitlab_sts_operator_keys")
    assert sample == 2
    await rt.client.close()


@pytest.mark.asyncio
async def test_rotation_write_is_conditioned_on_resource_version(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    await rt.check_keys()
    later = NOW + timedelta(days=8)
    stale = await client.get(SECRET)
    # Another writer (a second operator) changes the Secret after we read it.
    original_get = client.get_or_none

    async def racing_get(path: str) -> dict[str, Any] | None:
        got = await original_get(path)
        await client.merge_patch(SECRET, {"metadata": {"annotations": {"touched": "yes"}}})
        return got

    client.get_or_none = racing_get  # type: ignore[method-assign]
    out = await rotate_once(client, "gitlab-sts", "gitlab-sts-keys", rt.policy, later, es256)
    client.get_or_none = original_get  # type: ignore[method-assign]
    assert out.result == CONFLICT
    assert (await client.get(SECRET))["data"] == stale["data"]  # nothing half-written
    assert (await rotate_once(client, "gitlab-sts", "gitlab-sts-keys", rt.policy, later, es256)).result == ROTATED
    await rt.client.close()


@pytest.mark.asyncio
async def test_key_status_shows_the_ring_and_a_corrupted_secret(k8s: Any, client: KubeClient) -> None:
    rt = runtime_for(k8s)
    assert (await rt.check_keys()).result == CREATED

    async def status() -> dict[str, Any]:
        cm = await client.get(path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-status"))
        doc: dict[str, Any] = json.loads(cm["data"][KEYS_STATUS])
        return doc

    doc = await status()
    ring = parse_keyring(base64.b64decode((await client.get(SECRET))["data"][KEYSET_FILE]).decode())
    signing = ring.signing_key(NOW)
    assert signing is not None
    assert doc["algorithm"] == "ES256" and doc["error"] is None and doc["algorithmSwitch"] is None
    assert (doc["signing"]["kid"], doc["signing"]["alg"]) == (signing.kid, "ES256")
    assert [(k["kid"], k["state"]) for k in doc["keys"]] == [(signing.kid, "signing"), (ring.keys[1].kid, "pending")]
    assert doc["keys"][1]["activateAt"] == f"{ring.keys[1].activate_at:%Y-%m-%dT%H:%M:%SZ}"
    await client.merge_patch(SECRET, {"data": {KEYSET_FILE: base64.b64encode(b"{not json").decode()}})
    assert (await rt.check_keys()).result == CORRUPTED
    doc = await status()
    assert "not valid JSON" in doc["error"] and doc["keys"] == [] and doc["signing"] is None
    await rt.client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("data", [
    {},
    {KEYSET_FILE: "!!!not base64"},
    {KEYSET_FILE: base64.b64encode(b"{not json").decode()},
    {KEYSET_FILE: base64.b64encode(b'{"keys": [{"jwk": {"kty": "oct", "k": "AAAA"}}]}').decode()},
])
async def test_corrupted_secret_is_never_overwritten(k8s: Any, client: KubeClient, data: dict[str, str]) -> None:
    await client.create(path_for("v1", "secrets", "gitlab-sts"),
                        {"metadata": {"name": "gitlab-sts-keys", "namespace": "gitlab-sts"}, "data": data})
    before = await client.get(SECRET)
    rt = runtime_for(k8s)
    for _ in range(2):
        out = await rt.check_keys()
        assert out.result == CORRUPTED
        assert "AAAA" not in out.message  # never echoes key material
    after = await client.get(SECRET)
    assert after["data"] == before["data"]
    assert metrics.REGISTRY.get_sample_value("gitlab_sts_operator_keyset_corrupted") == 1
    assert [e["reason"] for e in events(k8s)] == ["KeySetCorrupted"]  # once, not on every check
    await rt.client.close()
