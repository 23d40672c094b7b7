"""KMock on loopback, with resourceVersion semantics added so conditioned writes can be tested."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock
import pytest_asyncio

from gitlab_sts.operator.kube import Endpoint, KubeClient

BINDINGS = "gitlab-sts.io/v1alpha1/gitlabawsbindings"
NAMESPACES = "v1/namespaces"


@dataclass
class Fault:
    """Answer `count` requests whose method and path match with `status` (or end a watch stream: status 0)."""

    method: str
    path: str  # a regular expression searched in the URL path
    status: int
    count: int = 1

    def matches(self, request: Any) -> bool:
        """Whether this fault applies to the request (and has uses left)."""
        return self.count > 0 and str(request.method).upper().endswith(self.method) \
            and re.search(self.path, request.url.path) is not None


class VersionedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """KMock's emulator plus resourceVersion and injected faults, closer to a real API server.

    resourceVersion: stamped on every write, checked when a write names one (409), returned by a listing,
    and honoured by a watch that names one (only objects changed since then are sent, not every object).
    faults: matching requests fail with the fault's status; drop_watches() ends the open watch streams.
    """

    _counter = itertools.count(1)
    last_version = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults: list[Fault] = []
        self.watch_epoch = 0  # drop_watches() bumps it; a stream opened in an older epoch ends
        # KMock logs every request and matches each new one against its reactions by scanning that log:
        # O(requests) per request. Benchmarks of 10,000 bindings keep only the latest few (None: keep all).
        self.keep_requests: int | None = None

    def drop_watches(self) -> None:
        """End every open watch stream at its next event (as a dropped connection would)."""
        self.watch_epoch += 1

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:  # noqa: N802 - overrides
        # KMock scans every stored object per request; a named object is found by its key instead, so that
        # 10,000 bindings cost the benchmark's emulator O(1) per status patch, not O(n).
        if request.name is not None and request.namespace is not None and request.resource is not None:
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        return list(super()._KubernetesEmulator__get_objs(request, strict))  # type: ignore[misc]

    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = str(VersionedEmulator.last_version)
        return result

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        since = str(request.params.get("resourceVersion") or "")
        if not since.isdigit() or since == "0":
            async for item in super()._serve_watch(request):
                yield item
            return
        epoch = self.watch_epoch
        yield b""
        async with self._lock:
            changed = [obj.raw for (res, ns, name), obj in self.objects.items()
                       if res == request.resource and not obj.deleted
                       and (request.namespace is None or ns == request.namespace)
                       and int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > int(since)]
        for raw in changed:
            yield {"type": "MODIFIED", "object": raw}
        assert request.resource is not None
        async for event in self._buses[request.resource]:
            if self.watch_epoch != epoch:
                return  # dropped: the client sees the stream end and resumes from its last resourceVersion
            namespace = event.get("object", {}).get("metadata", {}).get("namespace")
            if request.namespace is None or namespace == request.namespace:
                yield event

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        keep = getattr(self, "keep_requests", None)
        if keep is not None and len(self._requests) > keep:
            del self._requests[:-keep]
        for fault in getattr(self, "faults", ()):
            if fault.status and fault.matches(request):
                fault.count -= 1
                raise kmock.KubernetesError(fault.status, "Injected", f"injected fault {fault.status}")
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
            VersionedEmulator.last_version = int(meta["resourceVersion"])
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
