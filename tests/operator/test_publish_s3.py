"""S3 publishing end to end: the operator (over KMock) uploads to an S3-compatible server on loopback (moto), with
boto3; rotation republishes before a key signs; outages hold activation back and show in status and metrics."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
import pytest_asyncio
from moto.server import ThreadedMotoServer
from operator_helpers import T0, Clock, es256, metric, settings

from gitlab_sts.core.keys import KEYSET_FILE, KeyRing, parse_keyring
from gitlab_sts.core.settings import Settings
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.keyrotation import CREATED, ROTATED, UNCHANGED, UNPUBLISHED
from gitlab_sts.operator.kube import Endpoint, path_for
from gitlab_sts.operator.publish import STATUS_KEY, PublishError, S3Store
from gitlab_sts.operator.runtime import Runtime, build_runtime

BUCKET = "oidc-issuer"
PREFIX = "gitlab-sts"
SECRET = path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")
STATUS = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-status")
LEAD = timedelta(hours=24)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto), one bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _aws_env().items():
            mp.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _aws_env() -> dict[str, str]:
    # The standard AWS environment (as IRSA would provide a role); nothing is read from ~/.aws.
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _aws_env().items():
        monkeypatch.setenv(name, value)


def s3_settings(endpoint: str, bucket: str = BUCKET) -> Settings:
    return settings(f"""
issuer: {endpoint}/{bucket}/{PREFIX}
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
tokens: {{lifetime: 900, maxLifetime: 3600, algorithm: ES256}}
keys: {{rotationPeriod: 604800, prePublication: 86400, clockSkew: 300}}
publish:
  ingress: false
  s3: {{bucket: {bucket}, region: us-east-1, prefix: {PREFIX}, endpointUrl: "{endpoint}"}}
""")


class FlakyStore(S3Store):
    """The real boto3 store with a switch that makes every call fail like an unreachable S3."""

    down = False

    def put(self, key: str, body: bytes, *, content_type: str, cache_control: str) -> None:
        if self.down:
            raise PublishError(f"upload of {key} failed: Could not connect to the endpoint URL")
        super().put(key, body, content_type=content_type, cache_control=cache_control)

    def get(self, key: str) -> bytes | None:
        if self.down:
            raise PublishError(f"read-back of {key} failed: Could not connect to the endpoint URL")
        return super().get(key)


Published = tuple[Runtime, FlakyStore]


def make_runtime(k8s: Any, endpoint: str, clock: Clock, *, bucket: str = BUCKET) -> tuple[Runtime, FlakyStore]:
    conf = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0)
    s = s3_settings(endpoint, bucket)
    rt = build_runtime(conf, s, Endpoint(server=str(k8s.server.url)), clock=clock, new_key=es256)
    assert rt.publisher is not None and s.publish.s3 is not None
    store = FlakyStore(s.publish.s3)
    rt.publisher.store = store
    return rt, store


_CLIENTS: dict[str, Any] = {}


def s3(endpoint: str) -> Any:
    """A boto3 client for the test's own reads (made once: creating one takes ~0.1 s)."""
    if endpoint not in _CLIENTS:
        _CLIENTS[endpoint] = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return _CLIENTS[endpoint]


def s3_object(endpoint: str, name: str) -> dict[str, Any]:
    answer = s3(endpoint).get_object(Bucket=BUCKET, Key=f"{PREFIX}/.well-known/{name}")
    return {"body": json.loads(answer["Body"].read()), "type": answer["ContentType"],
            "cache": answer.get("CacheControl")}


def published_kids(endpoint: str) -> set[str]:
    return {k["kid"] for k in s3_object(endpoint, "jwks.json")["body"]["keys"]}


async def ring_of(rt: Runtime) -> KeyRing:
    secret = await rt.client.get(SECRET)
    return parse_keyring(base64.b64decode(secret["data"][KEYSET_FILE]).decode())


async def status_of(rt: Runtime) -> dict[str, Any]:
    cm = await rt.client.get(STATUS)
    doc: dict[str, Any] = json.loads(cm["data"][STATUS_KEY])
    return doc


async def clear_bucket(endpoint: str) -> None:
    for name in ("jwks.json", "openid-configuration"):
        s3(endpoint).delete_object(Bucket=BUCKET, Key=f"{PREFIX}/.well-known/{name}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture
async def published(k8s: Any, s3_endpoint: str, clock: Clock) -> AsyncIterator[Published]:
    """A runtime on `clock` publishing to the emptied bucket through a FlakyStore; its client closed at the end."""
    await clear_bucket(s3_endpoint)
    rt, store = make_runtime(k8s, s3_endpoint, clock)
    yield rt, store
    await rt.client.close()


@pytest.mark.asyncio
async def test_publish_rotate_publish_again(s3_endpoint: str, clock: Clock, published: Published) -> None:
    rt, _ = published
    assert (await rt.check_keys()).result == CREATED
    ring = await ring_of(rt)
    jwks = s3_object(s3_endpoint, "jwks.json")
    assert jwks["type"] == "application/json" and jwks["cache"] == "public, max-age=300"
    assert {k["kid"] for k in jwks["body"]["keys"]} == {k.kid for k in ring.keys}
    assert not any("d" in k for k in jwks["body"]["keys"])  # public keys only
    disc = s3_object(s3_endpoint, "openid-configuration")
    issuer = f"{s3_endpoint}/{BUCKET}/{PREFIX}"
    assert disc["body"]["issuer"] == issuer and disc["body"]["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert disc["type"] == "application/json" and disc["cache"] == "public, max-age=300"
    status = await status_of(rt)
    assert status["via"] == ["s3"] and status["s3"]["jwks"]["matches"] is True
    assert status["s3"]["lastUploadAt"] == "2030-01-01T00:00:00Z" and status["s3"]["lastError"] is None
    assert metric("publish_last_success_timestamp_seconds") == T0.timestamp()
    assert metric("publish_jwks_matches") == 1

    # Nothing changed: no upload, but the read-back still confirms the copy.
    clock.now = T0 + timedelta(hours=1)
    assert (await rt.check_keys()).result == UNCHANGED
    assert metric("publish_last_success_timestamp_seconds") == T0.timestamp()
    assert metric("publish_last_verified_timestamp_seconds") == clock.now.timestamp()

    # A week on: the successor signs, a new key is created and published before it can sign.
    clock.now = T0 + timedelta(days=7, minutes=5)
    assert (await rt.check_keys()).result == ROTATED
    ring2 = await ring_of(rt)
    new = [k for k in ring2.keys if k.kid not in {m.kid for m in ring.keys}]
    assert len(new) == 1 and new[0].kid in published_kids(s3_endpoint)
    assert new[0].activate_at >= clock.now + LEAD
    assert (await status_of(rt))["s3"]["publishedSince"][new[0].kid] == "2030-01-08T00:05:00Z"


@pytest.mark.asyncio
async def test_every_signing_key_was_published_for_the_lead_before_it_signed(
        s3_endpoint: str, clock: Clock, published: Published) -> None:
    rt, store = published
    first_seen: dict[str, datetime] = {}
    first_signer = None
    # S3 is down across the creation of the third key and past its planned activation.
    outages = [(T0 + timedelta(days=6, hours=20), T0 + timedelta(days=15))]
    while clock.now < T0 + timedelta(days=22):
        store.down = any(a <= clock.now < b for a, b in outages)
        await rt.check_keys()
        if not store.down:
            for kid in published_kids(s3_endpoint):
                first_seen.setdefault(kid, clock.now)
        ring = await ring_of(rt)
        signer = ring.signing_key(clock.now)
        assert signer is not None
        first_signer = first_signer or signer.kid
        if signer.kid != first_signer:
            # The first token signed by a key is signed after S3 has served it for the whole lead.
            assert first_seen[signer.kid] + LEAD <= clock.now, signer.kid
        clock.now += timedelta(hours=12)  # KMock slows down with every request it keeps: few passes
    assert len({k.kid for k in ring.keys} | set(first_seen)) >= 4


@pytest.mark.asyncio
async def test_outage_holds_activation_back_and_shows_in_status_and_metrics(
        s3_endpoint: str, clock: Clock, published: Published) -> None:
    rt, store = published
    await rt.check_keys()  # A signs, B published ahead
    clock.now = T0 + timedelta(days=7, minutes=1)
    store.down = True
    failures_before = metric("publish_failures_total", stage="upload") or 0.0
    await rt.check_keys()  # B signs now; C is created but cannot be published
    ring = await ring_of(rt)
    b = ring.signing_key(clock.now)
    assert b is not None
    (c,) = [k for k in ring.keys if k.activate_at > clock.now]
    assert c.kid not in published_kids(s3_endpoint)
    status = await status_of(rt)
    assert status["s3"]["lastError"].startswith("upload of gitlab-sts/.well-known/jwks.json failed")
    assert status["s3"]["consecutiveFailures"] == 1
    assert c.kid in status["s3"]["awaitingPublication"]
    assert status["s3"]["jwks"]["missingKids"] == [c.kid] and status["s3"]["jwks"]["matches"] is False
    assert metric("publish_failures_total", stage="upload") == failures_before + 1
    assert metric("publish_jwks_matches") == 0 and metric("publish_keys_held_back") == 1
    assert rt.publisher is not None and rt.publisher.backoff(300) == 5.0

    # Still down when C was due: C is pushed back, B keeps signing; never a gap.
    planned = c.activate_at
    clock.now = planned - timedelta(hours=2)
    await rt.check_keys()
    ring = await ring_of(rt)
    c2 = next(k for k in ring.keys if k.kid == c.kid)
    assert c2.activate_at > planned and c2.activate_at >= clock.now + LEAD
    for t in (planned, planned + timedelta(hours=12), c2.activate_at - timedelta(seconds=1)):
        assert ring.signing_key(t).kid == b.kid  # type: ignore[union-attr]
    assert rt.publisher.backoff(300) == 10.0  # backs off: 5 s, 10 s, 20 s, ...

    # S3 is back: C is published now and signs one lead time later, not before.
    store.down = False
    clock.now += timedelta(hours=1)
    back = clock.now
    await rt.check_keys()
    assert c.kid in published_kids(s3_endpoint)
    ring = await ring_of(rt)
    c3 = next(k for k in ring.keys if k.kid == c.kid)
    assert c3.activate_at >= back + LEAD
    status = await status_of(rt)
    assert status["s3"]["lastError"] is None and status["s3"]["jwks"]["matches"] is True
    assert metric("publish_jwks_matches") == 1


@pytest.mark.asyncio
async def test_first_key_set_waits_for_its_publication(
        s3_endpoint: str, clock: Clock, published: Published) -> None:
    rt, store = published
    store.down = True
    assert (await rt.check_keys()).result == UNPUBLISHED
    assert await rt.client.get_or_none(SECRET) is None  # no key can sign that AWS could not verify
    store.down = False
    clock.now += timedelta(seconds=5)
    assert (await rt.check_keys()).result == CREATED
    ring = await ring_of(rt)
    signer = ring.signing_key(clock.now)
    assert signer is not None and signer.kid in published_kids(s3_endpoint)


@pytest.mark.asyncio
async def test_publication_history_survives_a_restart_and_deleted_objects_are_restored(
        k8s: Any, s3_endpoint: str) -> None:
    await clear_bucket(s3_endpoint)
    clock = Clock()
    rt, _ = make_runtime(k8s, s3_endpoint, clock)
    await rt.check_keys()
    pending = [k for k in (await ring_of(rt)).keys if k.activate_at > clock.now]
    await rt.client.close()

    # A new operator process: the history comes from the status ConfigMap, so B keeps its activation.
    clock.now = T0 + timedelta(days=6, hours=23)
    rt2, _ = make_runtime(k8s, s3_endpoint, clock)
    try:
        await clear_bucket(s3_endpoint)  # someone emptied the bucket meanwhile
        await rt2.check_keys()
        assert published_kids(s3_endpoint) >= {k.kid for k in pending}  # re-uploaded
        ring = await ring_of(rt2)
        # B reappeared in the bucket only now: its lead time starts again, A keeps signing meanwhile.
        b = next(k for k in ring.keys if k.kid == pending[0].kid)
        assert b.activate_at >= clock.now + LEAD
        assert ring.signing_key(clock.now + timedelta(hours=2)).kid != b.kid  # type: ignore[union-attr]
    finally:
        await rt2.client.close()


@pytest.mark.asyncio
async def test_real_boto3_error_is_reported_in_plain_words(k8s: Any, s3_endpoint: str) -> None:
    clock = Clock()
    rt, _ = make_runtime(k8s, s3_endpoint, clock, bucket="no-such-bucket")
    try:
        assert (await rt.check_keys()).result == UNPUBLISHED
        status = await status_of(rt)
        assert "NoSuchBucket" in status["s3"]["lastError"]
        assert status["s3"]["bucket"] == "no-such-bucket"
        assert status["s3"]["objects"] == ["gitlab-sts/.well-known/openid-configuration",
                                           "gitlab-sts/.well-known/jwks.json"]
    finally:
        await rt.client.close()


@pytest.mark.asyncio
async def test_ingress_only_status_names_the_live_issuer(k8s: Any) -> None:
    conf = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0)
    rt = build_runtime(conf, settings(), Endpoint(server=str(k8s.server.url)), clock=Clock(), new_key=es256)
    try:
        assert (await rt.check_keys()).result == CREATED
        status = await status_of(rt)
        assert status["issuer"] == "https://sts.example.com" and status["via"] == ["ingress"]
        assert "s3" not in status and "doctor" in status["ingress"]["check"]
    finally:
        await rt.client.close()


class DeniedReadsOfMissingObjects(FlakyStore):
    """S3 without s3:ListBucket: reading a missing object is 403 AccessDenied, not 404."""

    def get(self, key: str) -> bytes | None:
        got = super().get(key)
        if got is None:
            raise PublishError(f"read-back of {key} failed: AccessDenied: Access Denied")
        return got


@pytest.mark.asyncio
async def test_first_upload_works_when_missing_objects_read_as_access_denied(published: Published) -> None:
    rt, store = published
    assert rt.publisher is not None
    rt.publisher.store = DeniedReadsOfMissingObjects(store.target)
    assert (await rt.check_keys()).result == CREATED
    assert (await status_of(rt))["s3"]["jwks"]["matches"] is True
