"""Publishing the issuer's discovery document and JWKS to S3, gating key activation on it, and the status ConfigMap.

Each key check: read back what the bucket holds, upload what differs (JWKS first, then discovery), read the
JWKS back again, and only then let core.publishing.gate decide when a new key may sign. What the bucket
really holds, not what we meant to write, is what counts. The result goes into the `gitlab-sts-status`
ConfigMap (publish.json) and the gitlab_sts_operator_publish_* metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# boto3/botocore ship no type information; their objects are Any here.
import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from gitlab_sts.core.keys import KeyRing, Plan, RotationPolicy
from gitlab_sts.core.publishing import (
    DISCOVERY,
    JWKS,
    coverage,
    delayed_keys,
    documents,
    gate,
    track_published,
)
from gitlab_sts.core.settings import S3Publish, Settings
from gitlab_sts.core.timefmt import parse_rfc3339_or_none, rfc3339_or_none
from gitlab_sts.operator import metrics
from gitlab_sts.operator.kube import ApiError, KubeClient, path_for
from gitlab_sts.operator.statusmap import StatusKey

log = logging.getLogger("gitlab_sts.operator.publish")
STATUS_KEY = "publish.json"
CONTENT_TYPE = "application/json"
# Retry a failing upload after 5 s, 10 s, 20 s, ... up to the key check interval.
BACKOFF_BASE = 5.0


class PublishError(Exception):
    """An upload or read-back that failed (reason only)."""


class ObjectStore(Protocol):
    """The two calls the publisher makes (boto3 in production, anything in tests)."""

    def put(self, key: str, body: bytes, *, content_type: str, cache_control: str) -> None:
        """Upload one object."""

    def get(self, key: str) -> bytes | None:
        """Read one object; None when it does not exist."""


class S3Store:
    """boto3 with the pod's own AWS identity (IRSA, Pod Identity or the standard AWS environment)."""

    def __init__(self, target: S3Publish) -> None:
        self.target = target
        config = Config(
            retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=10,
            user_agent_extra="gitlab-sts-operator",
            # S3-compatible stores (MinIO, ...) rarely have wildcard DNS for virtual-hosted buckets.
            s3={"addressing_style": "path" if target.endpoint_url else "auto"},
        )
        self._client = boto3.session.Session().client("s3", region_name=target.region,
                                                      endpoint_url=target.endpoint_url, config=config)

    def put(self, key: str, body: bytes, *, content_type: str, cache_control: str) -> None:
        """PutObject with the content type and cache control AWS and browsers see."""
        try:
            self._client.put_object(Bucket=self.target.bucket, Key=key, Body=body, ContentType=content_type,
                                    CacheControl=cache_control)
        except ClientError as exc:
            raise PublishError(f"upload of s3://{self.target.bucket}/{key} failed: {_client_error(exc)}") from None
        except BotoCoreError as exc:
            raise PublishError(f"upload of s3://{self.target.bucket}/{key} failed: {exc}") from None

    def get(self, key: str) -> bytes | None:
        """GetObject; None for a missing object."""
        try:
            answer = self._client.get_object(Bucket=self.target.bucket, Key=key)
            body: bytes = answer["Body"].read()
            return body
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise PublishError(f"read-back of s3://{self.target.bucket}/{key} failed: {_client_error(exc)}") from None
        except BotoCoreError as exc:
            raise PublishError(f"read-back of s3://{self.target.bucket}/{key} failed: {exc}") from None


def _client_error(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()


@dataclass
class Publisher:
    """S3 publishing state across key checks (one per operator)."""

    settings: Settings
    policy: RotationPolicy
    store: ObjectStore | None  # None: ingress only (the service serves the documents itself)
    client: KubeClient
    namespace: str
    status_configmap: str
    since: dict[str, datetime] = field(default_factory=dict)
    loaded: bool = False
    failures: int = 0
    last_error: str | None = None
    last_attempt: datetime | None = None
    last_upload: datetime | None = None
    last_verified: datetime | None = None
    published_jwks: dict[str, Any] | None = None
    _status: StatusKey = field(init=False)

    def __post_init__(self) -> None:
        self._status = StatusKey(self.client, self.namespace, self.status_configmap, STATUS_KEY)

    @property
    def target(self) -> S3Publish | None:
        """The S3 target from settings, if any."""
        return self.settings.publish.s3

    def backoff(self, ceiling: float) -> float:
        """Seconds until the next attempt after `failures` failures in a row."""
        return min(ceiling, BACKOFF_BASE * float(2 ** max(0, min(self.failures - 1, 20))))

    async def _load(self) -> None:
        # The publication history outlives a restart in the status ConfigMap; without it every pending
        # key starts its lead time again (safe, only later).
        if self.loaded:
            return
        try:
            cm = await self.client.get_or_none(path_for("v1", "configmaps", self.namespace, self.status_configmap))
        except ApiError as exc:
            log.warning("cannot read the status ConfigMap: %s", exc)
            return
        self.loaded = True
        try:
            doc = json.loads(((cm or {}).get("data") or {}).get(STATUS_KEY) or "{}")
        except ValueError:
            return
        s3 = doc.get("s3") if isinstance(doc, dict) else None
        if not isinstance(s3, dict):
            return
        since = s3.get("publishedSince")
        if isinstance(since, dict):
            for kid, stamp in since.items():
                parsed = parse_rfc3339_or_none(stamp)
                if isinstance(kid, str) and parsed is not None:
                    self.since[kid] = parsed
        self.last_upload = parse_rfc3339_or_none(s3.get("lastUploadAt"))

    async def _read_jwks(self, store: ObjectStore, target: S3Publish) -> tuple[bytes | None, dict[str, Any] | None]:
        raw = await asyncio.to_thread(store.get, target.key(JWKS))
        if raw is None:
            return None, None
        try:
            doc = json.loads(raw)
        except ValueError:
            return raw, None
        return raw, doc if isinstance(doc, dict) else None

    async def sync(self, ring: KeyRing, now: datetime) -> None:
        """Make the bucket hold the documents for ring at now, and record what it really holds."""
        store, target = self.store, self.target
        if store is None or target is None:
            return
        await self._load()
        self.last_attempt = now
        wanted = documents(self.settings.issuer, ring, now)
        stage = "read"
        try:
            try:
                raw, doc = await self._read_jwks(store, target)
                # A kid missing from the bucket loses its history now, even if the upload below restores it.
                self.since = track_published(self.since, coverage(doc, ring, now).published, now)
                current_discovery = await asyncio.to_thread(store.get, target.key(DISCOVERY))
            except PublishError as exc:
                # Without s3:ListBucket a missing object reads as 403, not 404: upload anyway, and let the
                # read-back after the upload decide.
                log.warning("read-back before upload failed, uploading anyway: %s", exc)
                raw = current_discovery = None
            if raw != wanted[JWKS] or current_discovery != wanted[DISCOVERY]:
                stage = "upload"
                # JWKS first: the discovery document must never point at keys that are not there yet.
                for name in (JWKS, DISCOVERY):
                    await asyncio.to_thread(store.put, target.key(name), wanted[name], content_type=CONTENT_TYPE,
                                            cache_control=target.cache_control)
                self.last_upload = now
                metrics.PUBLISH_LAST_SUCCESS.set(now.timestamp())
                log.info("published the issuer documents to s3://%s/%s", target.bucket, target.key(""))
                stage = "read"
                raw, doc = await self._read_jwks(store, target)
        except PublishError as exc:
            self.failures += 1
            self.last_error = str(exc)
            metrics.PUBLISH_FAILURES.labels(stage=stage).inc()
            log.error("publishing to S3 failed (attempt %d): %s", self.failures, exc)
            return
        self.failures, self.last_error = 0, None
        self.published_jwks = doc
        self.since = track_published(self.since, coverage(doc, ring, now).published, now)
        if raw == wanted[JWKS]:
            self.last_verified = now
            metrics.PUBLISH_LAST_VERIFIED.set(now.timestamp())

    async def gate(self, before: KeyRing, proposed: Plan, now: datetime) -> Plan | None:
        """keyrotation.Gate: publish the proposed ring, then hold back keys that are not published long enough."""
        if self.store is None:
            return proposed  # ingress: the service serves each key from its createdAt, from the same Secret
        await self.sync(proposed.ring, now)
        gated = gate(before, proposed, now, self.policy, self.since)
        if gated.ring.signing_key(now) is None and proposed.ring.signing_key(now) is not None:
            return None  # nothing published can sign: keep what exists rather than write an unusable set
        for note in gated.notes[len(proposed.notes):]:
            log.warning("key activation held back: %s", note)
        return gated

    def status(self, ring: KeyRing | None, now: datetime) -> dict[str, Any]:
        """The publish.json document of the status ConfigMap."""
        s = self.settings
        doc: dict[str, Any] = {
            "issuer": s.issuer, "discoveryUrl": s.issuer + "/.well-known/openid-configuration",
            "jwksUri": s.jwks_uri, "via": list(s.publish.via),
        }
        if s.publish.ingress:
            doc["ingress"] = {"servedBy": "the exchange service, from the keys Secret",
                              "check": f"gitlab-sts doctor --issuer {s.issuer}"}
        target = self.target
        if target is not None:
            cov = coverage(self.published_jwks, ring, now) if ring is not None else None
            held = delayed_keys(ring, now, self.since, self.policy) if ring is not None else []
            metrics.PUBLISH_MATCHES.set(1 if cov is not None and cov.matches and self.last_error is None else 0)
            metrics.PUBLISH_HELD_BACK.set(len(held))
            pending = {k.kid: rfc3339_or_none(k.activate_at) for k in ring.keys if k.kid in held} if ring else {}
            doc["s3"] = {
                "bucket": target.bucket, "region": target.region, "endpointUrl": target.endpoint_url,
                "objects": [target.key(DISCOVERY), target.key(JWKS)], "publicUrl": target.url,
                "lastAttemptAt": rfc3339_or_none(self.last_attempt), "lastUploadAt": rfc3339_or_none(self.last_upload),
                "lastVerifiedAt": rfc3339_or_none(self.last_verified), "lastError": self.last_error,
                "consecutiveFailures": self.failures,
                "publishedSince": {kid: rfc3339_or_none(t) for kid, t in sorted(self.since.items())},
                "jwks": cov.as_status() if cov is not None else None,
                "awaitingPublication": pending,
            }
        return doc

    async def write_status(self, ring: KeyRing | None, now: datetime) -> None:
        """Create or update the status ConfigMap when its content changed (best effort)."""
        await self._status.write(self.status(ring, now))


def publisher_for(settings: Settings, policy: RotationPolicy, client: KubeClient, namespace: str,
                  status_configmap: str, store: ObjectStore | None = None) -> Publisher:
    """A Publisher for settings; builds the boto3 store when settings name an S3 target and none is given."""
    target = settings.publish.s3
    if store is None and target is not None:
        store = S3Store(target)
    return Publisher(settings, policy, store, client, namespace, status_configmap)

