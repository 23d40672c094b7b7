"""Idle and slow clients cannot starve anyone (issue #12), against real gunicorn on loopback.

bench/bench_slow_clients.py is the full-size run (10,000 idle + 100 slow); this is the same shape at
500 idle + 20 slow, small enough for `make test` on a shared 2-core machine.
"""

from __future__ import annotations

import resource
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.service.harness import BackgroundThreads, FakeGitLabProcess, Service, eventually, start_service

IDLE = 500
SLOW = 20


def raise_fd_limit(need: int) -> None:
    """Each client socket here is a file descriptor of the test process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def connect(url: str) -> socket.socket:
    """A TCP connection to the service."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def still_open(sock: socket.socket) -> bool:
    """True while the server has neither answered nor closed the connection."""
    # select, not a non-blocking recv: a socket with a timeout waits for data even with MSG_DONTWAIT.
    readable, _, failed = select.select([sock], [], [sock], 0)
    return not readable and not failed  # readable: an answer, or the end of the connection


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection or `timeout` passes."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:  # a timeout, or a reset after the answer
        pass
    return data


HEADERS = (b"POST /v1/token HTTP/1.1\r\nHost: sts\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: 300\r\n\r\n")


class SlowClients(BackgroundThreads):
    """Half send request headers a byte at a time, half a body a byte at a time; each reconnects when cut off."""

    def __init__(self, url: str, count: int, interval: float) -> None:
        self.url, self.interval = url, interval
        super().__init__()
        self.cut_off_in_headers = 0
        self.cut_off_in_body = 0
        self.other: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True) for i in range(count)]

    def _run(self, in_headers: bool) -> None:
        while not self.stop.is_set():
            sock = connect(self.url)
            try:
                if not in_headers:
                    sock.sendall(HEADERS)
                payload = HEADERS if in_headers else b"x" * 300
                outcome = self._drip(sock, payload)
            finally:
                sock.close()
            with self._lock:
                if outcome == "closed" and in_headers:
                    self.cut_off_in_headers += 1
                elif not in_headers and (outcome.startswith("HTTP/1.1 408") or outcome == "closed"):
                    # 408, or closed: the server's close after its 408 can reach this client as a reset that
                    # discards the unread 408 (test_deadlines_close_slow_requests checks the 408 itself).
                    self.cut_off_in_body += 1
                elif outcome != "stopped":
                    self.other.append(outcome[:80])

    def _drip(self, sock: socket.socket, payload: bytes) -> str:
        for byte in payload:
            if self.stop.wait(self.interval):
                return "stopped"
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return "closed"
            if not still_open(sock):
                answer = read_answer(sock, 1)
                return answer.decode(errors="replace") or "closed"
        return read_answer(sock, 5).decode(errors="replace") or "closed"


def token_latencies(svc: Service, tokens: list[str]) -> list[float]:
    """Seconds per /v1/token request, two client threads at a time."""
    out: list[float] = []
    failures: list[int] = []

    def run(part: list[str]) -> None:
        with requests.Session() as session:
            for tok in part:
                form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": tok,
                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
                started = time.perf_counter()
                answer = session.post(svc.url + "/v1/token", data=form, timeout=30)
                out.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    failures.append(answer.status_code)

    threads = [threading.Thread(target=run, args=(tokens[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    return out


def p99(values: list[float]) -> float:
    """The 99th percentile."""
    return statistics.quantiles(values, n=100)[98]


@pytest.fixture
def deadline_service(fake_gitlab: FakeGitLabProcess, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The service with short header and body deadlines (3 s) so that the test sees them act."""
    monkeypatch.setenv("GITLAB_STS_HEADER_TIMEOUT", "3")
    monkeypatch.setenv("GITLAB_STS_BODY_TIMEOUT", "3")
    svc = start_service(tmp_path, fake_gitlab, workers=2)
    yield svc
    svc.stop()


def test_idle_and_slow_clients_starve_nobody(deadline_service: Service) -> None:
    svc = deadline_service
    raise_fd_limit(IDLE + SLOW + 256)
    claims = {"environment": "staging", "environment_protected": "false"}
    tokens = [svc.job_token(**claims) for _ in range(320)]
    token_latencies(svc, tokens[:20])  # warm both workers
    without = token_latencies(svc, tokens[20:120])

    idle = [connect(svc.url) for _ in range(IDLE)]
    probes: list[int | str] = []
    try:
        with SlowClients(svc.url, SLOW, interval=1.0) as slow:
            time.sleep(1)  # let every slow client get its connection in
            stop = threading.Event()

            def probe() -> None:
                while not stop.wait(0.5):
                    try:
                        probes.append(requests.get(svc.url + "/healthz", timeout=5).status_code)
                    except requests.RequestException as exc:
                        probes.append(type(exc).__name__)

            prober = threading.Thread(target=probe)
            prober.start()
            with_them = token_latencies(svc, tokens[120:220])
            # Long enough that every slow client has met its deadline at least once.
            eventually(lambda: slow.cut_off_in_headers >= SLOW // 2 and slow.cut_off_in_body >= SLOW // 2,
                       timeout=60, interval=0.5)
            stop.set()
            prober.join()
        held = sum(still_open(s) for s in idle)
    finally:
        for s in idle:
            s.close()
    # Measured before and after, so that a burst of load from elsewhere on the machine weighs on both sides.
    without += token_latencies(svc, tokens[220:])

    ratio = p99(with_them) / p99(without)
    print(f"held {held}/{IDLE} idle; /healthz {probes.count(200)}/{len(probes)}; /v1/token p99 "
          f"{p99(without) * 1000:.1f} ms without, {p99(with_them) * 1000:.1f} ms with ({ratio:.2f}x); "
          f"slow clients cut off in headers {slow.cut_off_in_headers}, cut off in the body {slow.cut_off_in_body}")
    assert held == IDLE  # idle connections are held (60 s idle deadline), not refused
    assert probes and all(p == 200 for p in probes), probes
    assert not slow.other, slow.other
    # Issue #12 asks for 2x at full size (bench/bench_slow_clients.py); here the idle sockets, 20 client threads
    # and a loaded shared machine share 2 cores with the service, so the bound is looser. Under gthread the same
    # run timed out (ratio unbounded).
    assert ratio < 4, ratio


def test_deadlines_close_slow_requests(deadline_service: Service) -> None:
    svc = deadline_service
    # Request headers a byte a second: cut off at the 3 s header deadline, not kept alive by the trickle.
    sock = connect(svc.url)
    started = time.monotonic()
    closed = False
    for byte in HEADERS:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.5)
        if not still_open(sock):
            closed = True
            break
    sock.close()
    assert closed
    assert 2.5 < time.monotonic() - started < 20

    # A body a byte a second: 408 at the 3 s body deadline, and the connection closes.
    sock = connect(svc.url)
    sock.sendall(HEADERS)
    for _ in range(20):
        sock.sendall(b"x")
        time.sleep(1)
        if not still_open(sock):
            break
    answer = read_answer(sock, 15)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"temporarily" not in answer and b'"error":"invalid_request"' in answer

    # A whole request sent in one go is unaffected.
    assert svc.exchange(svc.job_token(environment="staging",
                                      environment_protected="false")).status_code == 200
