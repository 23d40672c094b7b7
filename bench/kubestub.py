"""A minimal in-process Kubernetes API server for the scale benchmarks (no cluster, no KMock).

KMock matches every request against its reactions by scanning the log of all earlier requests, so one
request costs O(requests so far): 10,000 bindings took minutes to create. This stand-in keeps objects in a
dict and answers what the operator uses: discovery, list (limit/continue) with a resourceVersion, watch from
a resourceVersion (with history), get, create, JSON merge patch (main resource and /status, conditioned on
metadata.resourceVersion, generation bumped on spec changes) and delete. Faults and dropped watches are
tested against KMock in tests/operator; here only speed matters.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Key = tuple[str, str, str]  # (plural, namespace, name)
RESOURCES = {
    "gitlabawsbindings": ("gitlab-sts.io/v1alpha1", "GitLabAWSBinding", True),
    "configmaps": ("v1", "ConfigMap", True),
    "secrets": ("v1", "Secret", True),
    "events": ("v1", "Event", True),
    "namespaces": ("v1", "Namespace", False),
}


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class KubeStub:
    """Objects, a resourceVersion counter, an event history and live watchers."""

    def __init__(self, history: int = 200_000) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self._rv = itertools.count(1)
        self.version = 0
        self.history: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=history)
        self._watchers: list[tuple[str, str | None, asyncio.Queue[tuple[int, str, dict[str, Any]]]]] = []
        self.requests = 0

    def _stamp(self, obj: dict[str, Any]) -> int:
        self.version = next(self._rv)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        return self.version

    def _emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        event = (self.version, kind, copy.deepcopy(obj))
        self.history.append(event)
        ns = obj["metadata"].get("namespace")
        for w_plural, w_ns, queue in self._watchers:
            if w_plural == plural and (w_ns is None or w_ns == ns):
                queue.put_nowait(event)

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object directly (as a fixture would)."""
        meta = obj.setdefault("metadata", {})
        key = (plural, str(meta.get("namespace") or ""), str(meta["name"]))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self._stamp(obj)
        self.objects[key] = obj
        self._emit(plural, "ADDED", obj)
        return obj

    # -- HTTP --------------------------------------------------------------------------------------------

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                  "reason": reason, "message": message}, status=code)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request."""
        self.requests += 1
        parts = [p for p in request.path.split("/") if p]
        if parts in (["api"], ["apis"], ["version"]) or len(parts) == 3 and parts[0] == "apis" \
                or parts == ["api", "v1"]:
            return self._discovery(parts)
        # /api/v1/... or /apis/g/v/...
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        ns: str | None = None
        if len(rest) >= 2 and rest[0] == "namespaces" and rest[1] and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        plural = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if plural not in RESOURCES:
            return self._status(404, "NotFound", f"no resource {plural}")
        if request.method == "GET" and name is None:
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, plural, ns)
            return self._list(request, plural, ns)
        if request.method == "GET":
            obj = self.objects.get((plural, ns or "", name or ""))
            return web.json_response(obj) if obj else self._status(404, "NotFound", f"{plural} {name} not found")
        if request.method == "POST":
            body = await request.json()
            meta = body.setdefault("metadata", {})
            if ns:
                meta["namespace"] = ns
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if (plural, str(meta.get("namespace") or ""), str(meta.get("name"))) in self.objects:
                return self._status(409, "AlreadyExists", f"{plural} {meta.get('name')} already exists")
            return web.json_response(self.put(plural, body), status=201)
        key = (plural, ns or "", name or "")
        obj = self.objects.get(key)
        if obj is None:
            return self._status(404, "NotFound", f"{plural} {name} not found")
        if request.method == "DELETE":
            del self.objects[key]
            self._stamp(obj)
            self._emit(plural, "DELETED", obj)
            return web.json_response(obj)
        if request.method == "PATCH":
            patch = await request.json()
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != obj["metadata"]["resourceVersion"]:
                return self._status(409, "Conflict", "the object has been modified")
            if sub == "status":
                patch = {"status": patch.get("status")}
            else:
                patch.pop("status", None)
                (patch.get("metadata") or {}).pop("generation", None)  # the server's to move, not the client's
            old_spec = copy.deepcopy(obj.get("spec"))
            merge(obj, patch)
            if sub != "status" and obj.get("spec") != old_spec:
                obj["metadata"]["generation"] = int(obj["metadata"].get("generation") or 1) + 1
            self._stamp(obj)
            self._emit(plural, "MODIFIED", obj)
            return web.json_response(obj)
        return self._status(405, "MethodNotAllowed", request.method)

    def _discovery(self, parts: list[str]) -> web.Response:
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "34", "gitVersion": "v1.34.0-stub"})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            version = {"groupVersion": "gitlab-sts.io/v1alpha1", "version": "v1alpha1"}
            return web.json_response({"kind": "APIGroupList", "groups": [
                {"name": "gitlab-sts.io", "versions": [version], "preferredVersion": version}]})
        group_version = "v1" if parts[0] == "api" else f"{parts[1]}/{parts[2]}"
        resources = []
        for plural, (api, kind, namespaced) in RESOURCES.items():
            if api == group_version:
                verbs = ["get", "list", "watch", "create", "patch", "delete"]
                resources.append({"name": plural, "singularName": kind.lower(), "kind": kind,
                                  "namespaced": namespaced, "verbs": verbs})
                if plural == "gitlabawsbindings":
                    resources.append({"name": plural + "/status", "singularName": "", "kind": kind, "namespaced": True,
                                      "verbs": ["get", "patch"]})
        return web.json_response({"kind": "APIResourceList", "groupVersion": group_version, "resources": resources})

    def _select(self, plural: str, ns: str | None) -> list[dict[str, Any]]:
        return [o for (p, n, _), o in self.objects.items() if p == plural and (ns is None or n == ns)]

    def _list(self, request: web.Request, plural: str, ns: str | None) -> web.Response:
        items = self._select(plural, ns)
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(items) or 1
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, plural: str, ns: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        queue: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
        entry = (plural, ns, queue)
        self._watchers.append(entry)
        try:
            if since == 0:  # no version: every object as ADDED first, as a real API server does
                for obj in self._select(plural, ns):
                    await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            else:
                if self.history and self.history[0][0] > since + 1:
                    await resp.write(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                                             "reason": "Expired"}}).encode() + b"\n")
                    return resp
                for version, kind, obj in list(self.history):
                    if version > since and obj.get("kind") and self._matches(obj, plural, ns):
                        await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    _version, kind, obj = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(entry)
        return resp

    @staticmethod
    def _matches(obj: dict[str, Any], plural: str, ns: str | None) -> bool:
        kind = RESOURCES[plural][1]
        return bool(obj.get("kind") == kind and (ns is None or obj["metadata"].get("namespace") == ns))


@asynccontextmanager
async def serve(stub: KubeStub) -> AsyncIterator[str]:
    """Serve the stub on a free loopback port; yields its URL."""
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
