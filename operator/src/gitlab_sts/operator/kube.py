"""A small asyncio Kubernetes API client: every call the operator makes, its list and watch of bindings included."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


# What a call to the API server (or another endpoint) raises when it failed for now: log, keep going, retry later.
TRANSIENT: tuple[type[Exception], ...] = (ApiError, aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, the listing's resourceVersion, and the continue token ("" when last)."""

    items: list[dict[str, Any]]
    version: str
    token: str


@dataclass(frozen=True)
class Endpoint:
    """Where the API server is and how to authenticate (headers are re-read on 401)."""

    server: str
    ssl_context: ssl.SSLContext | bool = True
    headers: Callable[[], Mapping[str, str]] = dict


def path_for(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """The REST path of a resource, collection or subresource."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace is not None:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
        if subresource is not None:
            parts.append(subresource)
    return "/".join(parts)


class KubeClient:
    """JSON over HTTP with the operator's credentials; one aiohttp session, closed by close()."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self._endpoint = endpoint
        self._session = aiohttp.ClientSession(
            base_url=endpoint.server.rstrip("/") + "/",
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Accept": "application/json", "User-Agent": "gitlab-sts-operator"},
        )
        self.calls = 0  # API calls made, for the benchmark and tests

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        """Send one request; raise ApiError on a non-2xx answer."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        for attempt in (1, 2):
            headers = dict(self._endpoint.headers())
            if data is not None:
                headers["Content-Type"] = content_type
            self.calls += 1
            async with self._session.request(method, path.lstrip("/"), data=data, params=params, headers=headers,
                                             ssl=self._endpoint.ssl_context) as resp:
                text = await resp.text()
                if resp.status == 401 and attempt == 1:
                    continue  # service account tokens rotate: the headers callable re-reads the token
                if resp.status >= 300:
                    reason, message = resp.reason or "", text[:500]
                    try:
                        status_doc = json.loads(text)
                        reason = str(status_doc.get("reason") or reason)
                        message = str(status_doc.get("message") or message)
                    except ValueError:
                        pass
                    raise ApiError(resp.status, reason, message)
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str) -> dict[str, Any]:
        """GET one object."""
        return await self.request("GET", path)

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        """GET one object, or None when it does not exist."""
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_all(self, path: str, *, page: int = 500) -> AsyncIterator[dict[str, Any]]:
        """Every item of a collection, paginated with limit/continue."""
        items, _version = await self.list_versioned(path, page=page)
        for item in items:
            yield item

    async def list_versioned(self, path: str, *, page: int = 500) -> tuple[list[dict[str, Any]], str]:
        """Every item of a collection (paginated) and the list's resourceVersion, to watch from."""
        first = await self.list_page(path, limit=page)
        items = list(first.items)
        async for more in self.more_pages(path, first, limit=page):
            items.extend(more.items)
        return items, first.version

    async def list_page(self, path: str, *, limit: int = 500, token: str = "") -> Page:
        """One page of a collection; its `version` is the snapshot every page of the listing belongs to."""
        params = {"limit": str(limit)}
        if token:
            params["continue"] = token
        doc = await self.request("GET", path, params=params)
        meta = doc.get("metadata") or {}
        return Page(list(doc.get("items") or ()), str(meta.get("resourceVersion") or ""),
                    str(meta.get("continue") or ""))

    async def more_pages(self, path: str, first: Page, *, limit: int = 500) -> AsyncIterator[Page]:
        """The pages after `first`, fetched one at a time (so a listing of 10,000 objects is never held whole)."""
        page = first
        while page.token:
            page = await self.list_page(path, limit=limit, token=page.token)
            yield page

    async def watch(self, path: str, resource_version: str, *, timeout_seconds: int = 300) -> AsyncIterator[
            dict[str, Any]]:
        """Watch events of a collection from resource_version (with bookmarks) until the server ends the stream.

        Raises ApiError for a non-2xx answer (410 Gone: the version is too old, list again); an ERROR event
        in the stream is yielded as it came, for the caller to read its status code.
        """
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if resource_version:
            params["resourceVersion"] = resource_version
        headers = dict(self._endpoint.headers())
        self.calls += 1
        # No total timeout on a stream: the server ends it after timeoutSeconds; a silent peer is caught by
        # sock_read (bookmarks arrive about once a minute on a real API server).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 60)
        async with self._session.get(path.lstrip("/"), params=params, headers=headers, timeout=timeout,
                                     ssl=self._endpoint.ssl_context) as resp:
            if resp.status >= 300:
                text = await resp.text()
                raise ApiError(resp.status, resp.reason or "", text[:500])
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new object to a collection."""
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch; a metadata.resourceVersion in the body makes it conditional (409 on conflict)."""
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)
