"""KMock on loopback, with resourceVersion semantics added so conditioned writes can be tested."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kmock
import pytest_asyncio

from gitlab_sts.operator.kube import Endpoint, KubeClient

BINDINGS = "gitlab-sts.io/v1alpha1/gitlabawsbindings"
NAMESPACES = "v1/namespaces"


class VersionedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """KMock's emulator plus resourceVersion: stamped on every write, checked when a write names one (409)."""

    _counter = itertools.count(1)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        action = getattr(request, "action", None)
        if request.resource is not None and action in (kmock.action.CREATE, kmock.action.UPDATE) \
                and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            wanted = meta.get("resourceVersion")
            if action == kmock.action.UPDATE and wanted:
                key = (request.resource, request.namespace, request.name)
                stored = self.objects[key] if key in self.objects else None  # noqa: SIM401 - no .get()
                if stored is not None and not stored.deleted:
                    have = stored.get("metadata", {}).get("resourceVersion")
                    if have != wanted:
                        raise kmock.KubernetesError(409, "Conflict", f"resourceVersion {wanted} is stale ({have})")
            meta["resourceVersion"] = str(next(self._counter))
        return await super()._handle(request)


@pytest_asyncio.fixture()
async def k8s() -> AsyncIterator[Any]:
    """A KMock Kubernetes emulator served on 127.0.0.1 (free port)."""
    async with VersionedEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources[BINDINGS] = kmock.ResourceInfo(kind="GitLabAWSBinding", namespaced=True,
                                                          subresources={"status"},
                                                          verbs={"get", "list", "watch", "patch"})
        # kopf's namespace observer waits for v1/namespaces to be discovered even when clusterwide, and only
        # then lets watchers start (kopf/_core/reactor/observation.py namespace_observer). A real API server
        # always lists it in /api/v1; KMock lists only declared or stored resources, so declare it.
        emulator.resources[NAMESPACES] = kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                                            verbs={"get", "list", "watch"})
        emulator.server = server
        yield emulator


@pytest_asyncio.fixture()
async def client(k8s: Any) -> AsyncIterator[KubeClient]:
    """Our Kubernetes client pointed at the emulator over real HTTP."""
    c = KubeClient(Endpoint(server=str(k8s.server.url)))
    yield c
    await c.close()
