"""Shared pieces of the benchmarks: the service stack on loopback, the load generator, result rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gitlab_sts.demo import exchange_form  # noqa: E402
from tests.service.harness import (  # noqa: E402
    FakeGitLabProcess,
    Service,
    start_service,
)


@dataclass
class LoadResult:
    """What one load run measured."""

    name: str
    connections: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    tool: str

    def line(self) -> str:
        """One human-readable line."""
        return (f"{self.name:<34} {self.rps:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p90 {self.p90_ms:6.2f} ms  "
                f"p99 {self.p99_ms:6.2f} ms  max {self.max_ms:7.2f} ms  errors {self.errors}  "
                f"({self.tool}, {self.connections} conn, {self.seconds:.0f} s)")

    def as_dict(self) -> dict[str, Any]:
        """For the JSON summary."""
        return asdict(self)


def ensure_wrk() -> str | None:
    """The wrk binary; installs the Debian package when missing and allowed (root, apt-get present)."""
    found = shutil.which("wrk")
    if found or os.environ.get("GITLAB_STS_BENCH_NO_INSTALL"):
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk from Debian (apt-get install -y wrk)", file=sys.stderr)
        for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            found = shutil.which("wrk")
            if found:
                break
    return found


def token_form(token: str) -> str:
    """The urlencoded RFC 8693 form for a token."""
    return urllib.parse.urlencode(exchange_form(token))


def wrk_run(name: str, url: str, *, connections: int, seconds: float, threads: int = 2,
            form: str | list[str] | None = None) -> LoadResult:
    """Run wrk (GET, or POST of the form(s) in turn) via wrk.lua and parse the JSON line the Lua script prints."""
    forms = [form] if isinstance(form, str) else form
    wrk = ensure_wrk()
    if wrk is None:
        return python_load(name, url, connections=connections, seconds=seconds, forms=forms)
    # wrk.lua POSTs when GITLAB_STS_BENCH_FORMS is set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_STS_BENCH_FORM")}
    if forms:
        env["GITLAB_STS_BENCH_FORMS"] = str(len(forms))
        env.update({f"GITLAB_STS_BENCH_FORM_{i}": f for i, f in enumerate(forms, 1)})
    cmd = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
           "-s", str(BENCH / "wrk.lua"), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("{"))
    data = json.loads(line)
    duration = data["duration_us"] / 1e6
    return LoadResult(name, connections, duration, data["requests"], data["errors"], data["requests"] / duration,
                      data["p50_us"] / 1000, data["p90_us"] / 1000, data["p99_us"] / 1000, data["max_us"] / 1000,
                      "wrk")


def python_load(name: str, url: str, *, connections: int, seconds: float,
                forms: list[str] | None = None) -> LoadResult:
    """A fallback closed-loop load generator (keep-alive sessions in threads) when wrk is missing."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        session = requests.Session()
        mine: list[float] = []
        bad = 0
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        turn = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                if forms:
                    turn += 1
                    r = session.post(url, data=forms[turn % len(forms)], headers=headers, timeout=10)
                else:
                    r = session.get(url, timeout=10)
                ok = r.status_code < 300
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - t0)
            bad += not ok
        with lock:
            latencies.extend(mine)
            errors += bad

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(connections)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult(name, connections, elapsed, len(latencies), errors, len(latencies) / elapsed,
                      pct(0.50), pct(0.90), pct(0.99), pct(1.0), "python")


@contextmanager
def stack(workers: int = 2, bindings: Path | None = None, **settings: Any) -> Iterator[Service]:
    """A fake GitLab process and a gunicorn service on loopback, torn down afterwards."""
    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-"))
    fake = FakeGitLabProcess()
    kwargs: dict[str, Any] = {"workers": workers, **settings}
    if bindings is not None:
        kwargs["bindings"] = bindings
    svc = start_service(root / "svc", fake, **kwargs)
    try:
        yield svc
    finally:
        svc.stop()
        fake.stop()
        shutil.rmtree(root, ignore_errors=True)


def staging_token(svc: Service, lifetime: int = 3600, job_id: int = 1001) -> str:
    """A GitLab token the example deploy-staging binding accepts."""
    return svc.gitlab.token(svc.url, lifetime=lifetime, environment="staging", environment_protected="false",
                            job_id=str(job_id), pipeline_id=str(50_000 + job_id))


def staging_forms(svc: Service, count: int = 64) -> list[str]:
    """RFC 8693 forms for `count` different jobs' tokens (distinct jti, job_id, pipeline_id, signature)."""
    return [token_form(staging_token(svc, job_id=2000 + i)) for i in range(count)]


def metric_sum(svc: Service, name: str, **labels: str) -> float:
    """Sum of a Prometheus series from /metrics, filtered by label values."""
    return svc.metric(name, **labels)


def per_call(fn: Callable[[], object], seconds: float = 2.0) -> tuple[float, int]:
    """Seconds per call of fn, measured over about `seconds`; returns (seconds per call, calls)."""
    fn()  # warm up caches
    n, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        fn()
        n += 1
        if n % 16 == 0 and time.perf_counter() >= deadline:
            break
    return (time.perf_counter() - started) / n, n


def machine_note() -> str:
    """CPU count and load, printed with every result (the machine is shared)."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
