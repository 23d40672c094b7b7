"""The status ConfigMap users `kubectl get`: each part of the operator owns one key of it."""

from __future__ import annotations

import logging

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
