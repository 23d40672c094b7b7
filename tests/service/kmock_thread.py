"""KMock served from a background thread, so that blocking tests and gunicorn subprocesses can use it."""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml

from gitlab_sts.service.kubeapi import KubeAccess, KubeApi


class VersionedEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """KMock's emulator plus a resourceVersion stamped on every write (as tests/operator/conftest.py does)."""

    _counter = itertools.count(1)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        action = getattr(request, "action", None)
        if request.resource is not None and action in (kmock.action.CREATE, kmock.action.UPDATE) \
                and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._counter))
        return await super()._handle(request)


class KMockThread:
    """Start with start(); url is the API server's address; stop() closes every connection (API down)."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> KMockThread:
        """Serve on a free loopback port; returns once it listens."""
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"KMock did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._main = asyncio.current_task()
        self._stopped = asyncio.Event()
        async with VersionedEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopped.wait()

    def stop(self) -> None:
        """Stop serving: open watches break and new connections are refused."""
        if self._stopped is not None and self._thread.is_alive():
            stopped = self._stopped

            def halt() -> None:
                # Cut the open watch streams first (as a dead API server would), then shut the server down.
                for task in asyncio.all_tasks(self._loop):
                    if task is not self._main:
                        task.cancel()
                stopped.set()

            self._loop.call_soon_threadsafe(halt)
            self._thread.join(30)

    def api(self) -> KubeApi:
        """A client of this server (the service's own client, with any token)."""
        return KubeApi(KubeAccess(self.url, lambda: "test", None))

    def kubeconfig(self, path: Path, namespace: str = "gitlab-sts") -> Path:
        """A kubeconfig naming this server with a token user."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u", "namespace": namespace}}],
        }))
        return path

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (for emulator calls that must happen there)."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(30)
