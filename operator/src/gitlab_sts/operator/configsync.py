"""Write the bindings document into the bindings ConfigMap: batched, skipped when unchanged, conditioned."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gitlab_sts.core.bindingdoc import DOC_FILE, DOC_FILE_GZ
from gitlab_sts.operator import metrics
from gitlab_sts.operator.kube import TRANSIENT, ApiError, KubeClient, path_for
from gitlab_sts.operator.memo import BindingMemo

DIGEST_ANNOTATION = "gitlab-sts.io/sha256"
_OURS = (DOC_FILE, DOC_FILE_GZ)
log = logging.getLogger("gitlab_sts.operator.config")


def configmap_body(name: str, namespace: str, data: Mapping[str, str], binary: Mapping[str, bytes],
                   digest: str) -> dict[str, Any]:
    """A new bindings ConfigMap."""
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "annotations": {DIGEST_ANNOTATION: digest},
                     "labels": {"app.kubernetes.io/name": "gitlab-sts", "app.kubernetes.io/component": "bindings"}},
        "data": dict(data),
    }
    if binary:
        body["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary.items()}
    return body


def configmap_patch(current: Mapping[str, Any], data: Mapping[str, str], binary: Mapping[str, bytes],
                    digest: str) -> dict[str, Any]:
    """A merge patch (conditioned on the resourceVersion read) that leaves exactly one of our two keys."""
    meta = current.get("metadata") or {}
    new_data: dict[str, Any] = {k: None for k in (current.get("data") or {}) if k in _OURS}
    new_data.update(data)
    new_binary: dict[str, Any] = {k: None for k in (current.get("binaryData") or {}) if k in _OURS}
    new_binary.update({k: base64.b64encode(v).decode() for k, v in binary.items()})
    patch: dict[str, Any] = {
        "metadata": {"resourceVersion": str(meta.get("resourceVersion") or ""),
                     "annotations": {DIGEST_ANNOTATION: digest}},
    }
    if new_data:
        patch["data"] = new_data
    if new_binary:
        patch["binaryData"] = new_binary
    return patch


def stored_digest(current: Mapping[str, Any] | None) -> str | None:
    """The digest annotation of the ConfigMap as read."""
    if not current:
        return None
    value = ((current.get("metadata") or {}).get("annotations") or {}).get(DIGEST_ANNOTATION)
    return str(value) if value else None


class ConfigWriter:
    """Keeps the ConfigMap equal to the memo: poke() after a change, run() coalesces and writes.

    One ConfigMap write per burst of changes (debounce), whatever the number of bindings.
    """

    def __init__(self, client: KubeClient, memo: BindingMemo, namespace: str, name: str,
                 debounce: float = 1.0) -> None:
        self._client = client
        self._memo = memo
        self._namespace = namespace
        self._name = name
        self._debounce = debounce
        self._wake = asyncio.Event()
        self.written_digest: str | None = None
        self.last_error: str | None = None
        # Told (digest, binding key -> generation) of each document found or put in the ConfigMap.
        self.on_written: Callable[[str, Mapping[str, int]], None] | None = None

    def poke(self) -> None:
        """Note that the memo changed; the next run() iteration writes."""
        self._wake.set()

    async def flush(self) -> bool:
        """Write the memo's document if the ConfigMap differs; True when a write happened."""
        if not self._memo.seeded:
            return False
        started = time.perf_counter()
        data, binary, digest = self._memo.payload()
        bindings = self._memo.rendered  # counted with the payload: the memo may move on while we write
        generations = self._memo.rendered_generations
        path = path_for("v1", "configmaps", self._namespace, self._name)
        for _attempt in range(5):
            current = await self._client.get_or_none(path)
            if stored_digest(current) == digest:
                self.written_digest = digest
                if self.on_written is not None:
                    self.on_written(digest, generations)
                metrics.CONFIG_WRITES.labels(result="unchanged").inc()
                return False
            try:
                if current is None:
                    body = configmap_body(self._name, self._namespace, data, binary, digest)
                    await self._client.create(path_for("v1", "configmaps", self._namespace), body)
                else:
                    await self._client.merge_patch(path, configmap_patch(current, data, binary, digest))
            except ApiError as exc:
                if exc.status == 409:  # someone wrote in between: read again and retry
                    metrics.CONFIG_WRITES.labels(result="conflict").inc()
                    continue
                raise
            self.written_digest = digest
            if self.on_written is not None:
                self.on_written(digest, generations)
            size = sum(len(v) for v in data.values()) + sum(len(v) for v in binary.values())
            metrics.CONFIG_WRITES.labels(result="written").inc()
            metrics.CONFIG_BYTES.set(size)
            metrics.CONFIG_BINDINGS.set(bindings)
            metrics.CONFIG_WRITE_SECONDS.observe(time.perf_counter() - started)
            log.info("wrote bindings ConfigMap %s/%s: %d bindings, %d bytes, sha256 %s%s", self._namespace,
                     self._name, bindings, size, digest[:12], " (gzip)" if binary else "")
            return True
        raise ApiError(409, "Conflict", "the bindings ConfigMap kept changing under us")

    async def run(self) -> None:
        """Write after every burst of pokes until cancelled; failures retry with backoff."""
        backoff = 1.0
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._debounce)  # let a burst (startup, kubectl apply -f dir) coalesce
            self._wake.clear()
            try:
                await self.flush()
                self.last_error = None
                backoff = 1.0
            except TRANSIENT as exc:
                self.last_error = str(exc)
                metrics.CONFIG_WRITES.labels(result="error").inc()
                log.warning("could not write the bindings ConfigMap: %s (retrying in %.0fs)", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                self._wake.set()
