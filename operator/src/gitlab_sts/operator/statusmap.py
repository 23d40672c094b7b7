"""The status ConfigMap users `kubectl get`: each part of the operator owns one key of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from gitlab_sts.operator.kube import TRANSIENT, KubeClient, path_for

log = logging.getLogger("gitlab_sts.operator")


async def put_status_key(client: KubeClient, namespace: str, configmap: str, key: str, text: str) -> bool:
    """Create the ConfigMap, or merge-patch only `key` when it differs; False when the write failed."""
    path = path_for("v1", "configmaps", namespace, configmap)
    try:
        existing = await client.get_or_none(path)
        if existing is None:
            await client.create(path_for("v1", "configmaps", namespace), {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": configmap, "namespace": namespace,
                             "labels": {"app.kubernetes.io/name": "gitlab-sts",
                                        "app.kubernetes.io/component": "status"}},
                "data": {key: text},
            })
        elif (existing.get("data") or {}).get(key) != text:
            # A merge patch of one key leaves the keys other parts of the operator write as they are.
            await client.merge_patch(path, {"data": {key: text}})
    except TRANSIENT as exc:
        log.warning("cannot write %s of the status ConfigMap: %s", key, exc)
        return False
    return True


class StatusKey:
    """One key of the status ConfigMap, holding a JSON document; written only when it changed since the last write."""

    def __init__(self, client: KubeClient, namespace: str, configmap: str, key: str) -> None:
        self._where = (client, namespace, configmap, key)
        self.written: str | None = None

    async def write(self, doc: Mapping[str, Any]) -> None:
        """Put doc when it differs from what was last written (best effort: a failure is retried next time)."""
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if text != self.written and await put_status_key(*self._where, text):
            self.written = text
