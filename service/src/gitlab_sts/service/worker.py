"""gunicorn's gevent worker with read deadlines: an idle or slow client holds a greenlet, never a thread.

Any CI job can reach the service, so a connection that sends nothing, or a byte every few seconds, must
cost a few KiB and not the thread that another job's request needs (issue #12). gevent gives each
connection a greenlet; the deadlines below bound how long each can hold one:

- to the first byte of a request: GITLAB_STS_IDLE_TIMEOUT (60 s) on a new connection, `keepalive` between
  requests on a kept-alive one;
- from the first byte to the end of the request headers: GITLAB_STS_HEADER_TIMEOUT (10 s);
- from the end of the headers to the end of the body: GITLAB_STS_BODY_TIMEOUT (10 s); the app answers
  408 and the connection closes;
- each write of the answer: the body deadline again (a client that stops reading).

Deadlines are whole-phase, not per read: 1 byte every 5 s does not extend them.
"""

from __future__ import annotations

import os
import socket
import time
from types import TracebackType
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

IDLE_TIMEOUT = float(os.environ.get("GITLAB_STS_IDLE_TIMEOUT", "60"))
HEADER_TIMEOUT = float(os.environ.get("GITLAB_STS_HEADER_TIMEOUT", "10"))
BODY_TIMEOUT = float(os.environ.get("GITLAB_STS_BODY_TIMEOUT", "10"))


class DeadlineExceeded(TimeoutError):
    """A client did not send its request (or read its answer) before the phase's deadline."""


class DeadlineSocket:
    """A client socket whose reads finish by the deadline of the request phase the connection is in."""

    def __init__(self, sock: socket.socket, keepalive: float) -> None:
        self._sock = sock
        self._keepalive = keepalive
        self._requests = 0
        self._deadline = float("inf")
        self._waiting_first_byte = False
        self._closed_by_deadline = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def start_request(self) -> None:
        """Waiting for the next request: the idle deadline runs until its first byte."""
        if self._requests:
            # Let every other ready connection have its turn first. Otherwise a client that sends its next
            # request as soon as it has the answer finds it already read, and this greenlet serves it without
            # ever yielding: measured, p50 1-7 ms but p99 0.6-1.0 s under wrk (bench/bench_workers.py).
            gevent.sleep(0)
        wait = IDLE_TIMEOUT if self._requests == 0 else (self._keepalive or IDLE_TIMEOUT)
        self._deadline = time.monotonic() + wait
        self._waiting_first_byte = True

    def headers_read(self) -> None:
        """The request line and headers are in: the body deadline starts."""
        self._requests += 1
        self._waiting_first_byte = False
        self._deadline = time.monotonic() + BODY_TIMEOUT

    def recv(self, size: int, *flags: int) -> bytes:
        """socket.recv, bounded by the phase deadline; EOF once a deadline closed the connection."""
        if self._closed_by_deadline:
            return b""  # the next request's parser sees the end, and gunicorn closes the connection
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
        self._sock.settimeout(remaining if remaining != float("inf") else None)
        try:
            data = self._sock.recv(size, *flags)
        except TimeoutError:
            self._expire()
        if data and self._waiting_first_byte:
            self._waiting_first_byte = False
            self._deadline = time.monotonic() + HEADER_TIMEOUT
        return data

    def send(self, data: bytes, *flags: int) -> int:
        """socket.send with the write deadline."""
        self._sock.settimeout(BODY_TIMEOUT)
        return self._sock.send(data, *flags)

    def sendall(self, data: bytes, *flags: int) -> None:
        """socket.sendall with the write deadline."""
        self._sock.settimeout(BODY_TIMEOUT)
        self._sock.sendall(data, *flags)

    def _expire(self) -> None:
        self._closed_by_deadline = True
        raise DeadlineExceeded("the client did not send its request in time")


class _HeaderDeadline:
    """Around gunicorn's read of one request's headers: a missed deadline closes the connection quietly."""

    def __init__(self, sock: DeadlineSocket | None) -> None:
        self._sock = sock

    def __enter__(self) -> None:
        if self._sock is not None:
            self._sock.start_request()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if self._sock is None:
            return False
        if kind is None:
            self._sock.headers_read()
            return False
        # Like gunicorn's own keepalive timeout (gevent.Timeout(keepalive, False)): no request, no log line.
        return kind is DeadlineExceeded


class ReloadingSSLContext:
    """An SSLContext stand-in that reloads the certificate when its files change (a renewed cert-manager Secret).

    gunicorn's gthread worker built a context per connection; the gevent worker builds one at start and
    would serve the old certificate until a restart. This checks the files' identity per connection (two
    stat calls) and rebuilds only when they changed.
    """

    def __init__(self, factory: Any, files: tuple[str, ...]) -> None:
        self._factory = factory
        self._files = files
        self._stamp: tuple[object, ...] | None = None
        self._context: Any = None

    def _current(self) -> Any:
        stamp = tuple(_identity(f) for f in self._files)
        if self._context is None or stamp != self._stamp:
            self._context, self._stamp = self._factory(), stamp
        return self._context

    def wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        """SSLContext.wrap_socket with the current certificate."""
        return self._current().wrap_socket(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


def _identity(path: str) -> object:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_CONTEXTS: dict[tuple[str, ...], ReloadingSSLContext] = {}


def ssl_context(config: Any, default_ssl_context_factory: Any) -> ReloadingSSLContext:
    """gunicorn's ssl_context hook: one reloading context per certificate/key pair in this process."""
    files = (str(config.certfile), str(config.keyfile))
    context = _CONTEXTS.get(files)
    if context is None:
        context = _CONTEXTS[files] = ReloadingSSLContext(default_ssl_context_factory, files)
    return context


class DeadlineGeventWorker(GeventWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's gevent worker whose client sockets carry the read deadlines above."""

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        """Serve one connection through a DeadlineSocket."""
        client.setblocking(True)
        wrapped = DeadlineSocket(client, float(self.cfg.keepalive))
        self._current_socket().value = wrapped
        try:
            # AsyncWorker.handle, skipping GeventWorker.handle's setblocking (done above).
            super(GeventWorker, self).handle(listener, wrapped, addr)
        finally:
            self._current_socket().value = None

    def timeout_ctx(self) -> _HeaderDeadline:
        """The deadline around reading one request's headers (gunicorn calls it in its keep-alive loop)."""
        return _HeaderDeadline(getattr(self._current_socket(), "value", None))

    def _current_socket(self) -> Any:
        # One greenlet per connection: a greenlet-local holds that connection's socket.
        local = self.__dict__.get("_local")
        if local is None:
            from gevent.local import local as greenlet_local

            local = self.__dict__["_local"] = greenlet_local()
        return local
