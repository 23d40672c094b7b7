"""Idle and slow clients against the exchange service (issue #12), full size.

    .venv/bin/python bench/bench_slow_clients.py [--idle 10000] [--slow 100] [--seconds 15] [--rounds 3]

Each round measures POST /v1/token with wrk (16 connections) twice: alone, and while `--idle` connections that
send nothing and `--slow` clients that send request headers (half) or a body (half) one byte every 5 s are
held open. Meanwhile /healthz is probed every second. Reports connections held at the end of each loaded
round, probe answers, and the /v1/token p99 ratio (loaded / alone) per round and its median.
tests/service/test_slow_clients.py is the same at 500 + 20 inside `make test`.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_note, stack, staging_forms, wrk_run  # noqa: E402

HEADERS = (b"POST /v1/token HTTP/1.1\r\nHost: sts\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: 300\r\n\r\n")


def raise_fd_limit() -> int:
    """Every client socket is a file descriptor of this process: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _open(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.setblocking(False)
    return sock


def _alive(sock: socket.socket) -> bool:
    # poll, not select: these descriptors are numbered far above select()'s limit of 1024.
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)


class Hostile:
    """`idle` silent connections and `slow` clients dripping a byte every `interval` s, all from one thread."""

    def __init__(self, url: str, idle: int, slow: int, interval: float = 5.0) -> None:
        self.address = _address(url)
        self.idle_count, self.slow_count, self.interval = idle, slow, interval
        self.idle: list[socket.socket] = []
        self.stop = threading.Event()
        self.cut_off = 0
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Hostile:
        started = time.monotonic()
        for _ in range(self.idle_count):
            self.idle.append(_open(self.address))
        print(f"  opened {len(self.idle)} idle connections in {time.monotonic() - started:.1f} s", flush=True)
        self.thread.start()
        return self

    def held(self) -> int:
        """Idle connections the server still holds open."""
        return sum(_alive(sock) for sock in self.idle)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for sock in self.idle:
            sock.close()

    def _drip(self) -> None:
        # Each slow client: (socket, bytes left to send, whether it is in the headers phase).
        clients = [self._slow_client(i) for i in range(self.slow_count)]
        while not self.stop.wait(self.interval):
            for i, (sock, left, in_headers) in enumerate(clients):
                try:
                    sock.send(left[:1])
                    left = left[1:]
                except OSError:
                    left = b""
                if not left or not _alive(sock):
                    self.cut_off += 1  # a deadline closed it (or it finished): reconnect, keep the pressure on
                    sock.close()
                    clients[i] = self._slow_client(i)
                else:
                    clients[i] = (sock, left, in_headers)
        for sock, _, _ in clients:
            sock.close()

    def _slow_client(self, i: int) -> tuple[socket.socket, bytes, bool]:
        sock = _open(self.address)
        if i % 2 == 0:
            return sock, HEADERS, True
        sock.sendall(HEADERS)
        return sock, b"x" * 300, False


class Prober:
    """GET /healthz every second on a new connection, 5 s timeout each."""

    def __init__(self, url: str) -> None:
        self.address = _address(url)
        self.results: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with socket.create_connection(self.address, timeout=5) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n")
                    self.results.append(sock.recv(64).split(b" ")[1].decode())
            except OSError as exc:
                self.results.append(type(exc).__name__)


def run(idle: int, slow: int, seconds: float, rounds: int, workers: int = 2) -> dict[str, Any]:
    """Alternate rounds alone / with the hostile clients; return every round and the medians."""
    limit = raise_fd_limit()
    print(f"# bench_slow_clients: {idle} idle + {slow} slow clients, {workers} workers; fd limit {limit}; "
          f"{machine_note()}", flush=True)
    out: dict[str, Any] = {"idle": idle, "slow": slow, "workers": workers, "machine": machine_note(), "rounds": []}
    with stack(workers=workers) as svc:
        forms = staging_forms(svc)
        url = svc.url + "/v1/token"
        wrk_run("warm-up", url, connections=16, seconds=2, form=forms)
        for r in range(rounds):
            alone = wrk_run("alone", url, connections=16, seconds=seconds, form=forms)
            with Hostile(svc.url, idle, slow) as hostile, Prober(svc.url) as prober:
                time.sleep(1)
                loaded = wrk_run("with idle+slow", url, connections=16, seconds=seconds, form=forms)
                held = hostile.held()
            probes = prober.results
            row = {"alone": alone.as_dict(), "loaded": loaded.as_dict(), "held": held,
                   "healthz_ok": probes.count("200"), "healthz_probes": len(probes),
                   "healthz_failures": [p for p in probes if p != "200"], "slow_cut_off": hostile.cut_off,
                   "p99_ratio": loaded.p99_ms / alone.p99_ms if alone.p99_ms else None,
                   "rps_ratio": loaded.rps / alone.rps if alone.rps else None}
            out["rounds"].append(row)
            print(f"  round {r + 1}: held {held}/{idle}; /healthz {row['healthz_ok']}/{len(probes)}; "
                  f"p99 alone {alone.p99_ms:.1f} ms, loaded {loaded.p99_ms:.1f} ms (x{row['p99_ratio']:.2f}); "
                  f"rate {alone.rps:.0f} -> {loaded.rps:.0f} req/s; errors {alone.errors}/{loaded.errors}; "
                  f"slow clients cut off by deadlines {hostile.cut_off}", flush=True)
    ratios = [row["p99_ratio"] for row in out["rounds"]]
    out["p99_ratio_median"] = statistics.median(ratios)
    out["held_min"] = min(row["held"] for row in out["rounds"])
    print(f"p99 ratio (loaded / alone) per round: {', '.join(f'{x:.2f}' for x in ratios)}; median "
          f"{out['p99_ratio_median']:.2f} (target <= 2); fewest idle connections held {out['held_min']}/{idle}")
    return out


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.idle, args.slow, args.seconds, args.rounds)
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
