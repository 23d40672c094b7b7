"""gunicorn worker classes side by side: gthread (2 threads, the model before issue #12) and gevent (now).

    .venv/bin/python bench/bench_workers.py [--seconds 30] [--rounds 6]

Two services (2 workers each, same settings and bindings) run at once; every round runs wrk (16 connections,
POST /v1/token with 64 jobs' tokens in turn) against each, in an order that flips every round. Reported per
class: req/s and p99 (medians of rounds), and CPU per request (user + system time of its worker processes over
the round, from /proc, divided by the requests). The ratios gevent / gthread per round are the figures quoted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LoadResult, machine_note, stack, staging_forms, wrk_run  # noqa: E402

CLASSES = {"gthread": "gthread", "gevent": "gitlab_sts.service.worker.DeadlineGeventWorker"}
TICKS = os.sysconf("SC_CLK_TCK")


def worker_cpus(master_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each of the master's child processes, the gunicorn workers."""
    out = {}
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return out


def worker_cpu(master_pid: int) -> float:
    """CPU seconds of all workers."""
    return sum(worker_cpus(master_pid).values())


@contextlib.contextmanager
def service(worker_class: str, workers: int) -> Iterator[Any]:
    """stack() with GITLAB_STS_WORKER_CLASS set while gunicorn starts."""
    old = os.environ.get("GITLAB_STS_WORKER_CLASS")
    os.environ["GITLAB_STS_WORKER_CLASS"] = worker_class
    try:
        cm = stack(workers=workers)
        svc = cm.__enter__()
    finally:
        if old is None:
            os.environ.pop("GITLAB_STS_WORKER_CLASS", None)
        else:
            os.environ["GITLAB_STS_WORKER_CLASS"] = old
    try:
        yield svc
    finally:
        cm.__exit__(None, None, None)


def run(seconds: float, rounds: int, workers: int = 2, connections: int = 16) -> dict[str, Any]:
    """Alternating rounds; returns per-class medians and the per-round ratios."""
    print(f"# bench_workers: gthread vs gevent, {workers} workers each, {connections} connections; {machine_note()}",
          flush=True)
    each = max(seconds / rounds, 2)
    results: dict[str, list[tuple[LoadResult, float]]] = {name: [] for name in CLASSES}
    with contextlib.ExitStack() as stacks:
        services = {name: stacks.enter_context(service(cls, workers)) for name, cls in CLASSES.items()}
        forms = {name: staging_forms(svc) for name, svc in services.items()}
        for name, svc in services.items():
            wrk_run("warm-up", svc.url + "/v1/token", connections=connections, seconds=2, form=forms[name])
        for r in range(rounds):
            order = list(CLASSES) if r % 2 == 0 else list(reversed(CLASSES))
            for name in order:
                svc = services[name]
                before = worker_cpus(svc.process.pid)
                load = wrk_run(name, svc.url + "/v1/token", connections=connections, seconds=each, form=forms[name])
                after = worker_cpus(svc.process.pid)
                split = [after[p] - before.get(p, 0.0) for p in after]
                cpu = sum(split)
                per_request_us = cpu / load.requests * 1e6 if load.requests else 0.0
                results[name].append((load, per_request_us))
                # The split shows whether one worker got most connections (a kept-alive connection stays put).
                print(f"  round {r + 1} {load.line()}  CPU {per_request_us:.0f} us/request, per worker "
                      f"{'/'.join(f'{c:.1f}' for c in split)} s", flush=True)
    out: dict[str, Any] = {"machine": machine_note(), "workers": workers, "connections": connections,
                           "rounds": rounds}
    for name in CLASSES:
        rows = results[name]
        out[name] = {"rps_median": statistics.median(x.rps for x, _ in rows),
                     "p99_ms_median": statistics.median(x.p99_ms for x, _ in rows),
                     "cpu_us_per_request_median": statistics.median(c for _, c in rows),
                     "errors": sum(x.errors for x, _ in rows), "rounds": [x.as_dict() | {"cpu_us": c} for x, c in rows]}
    pairs = list(zip(results["gthread"], results["gevent"], strict=True))
    out["rps_ratio_rounds"] = [b[0].rps / a[0].rps for a, b in pairs]
    out["cpu_ratio_rounds"] = [b[1] / a[1] for a, b in pairs if a[1]]
    out["rps_ratio_median"] = statistics.median(out["rps_ratio_rounds"])
    out["cpu_ratio_median"] = statistics.median(out["cpu_ratio_rounds"])
    for name in CLASSES:
        o = out[name]
        print(f"{name}: {o['rps_median']:.0f} req/s, p99 {o['p99_ms_median']:.1f} ms, "
              f"CPU {o['cpu_us_per_request_median']:.0f} us/request (medians of {rounds} rounds), errors {o['errors']}")
    print(f"gevent / gthread per round: rate {', '.join(f'{x:.2f}' for x in out['rps_ratio_rounds'])} "
          f"(median {out['rps_ratio_median']:.2f}); CPU per request "
          f"{', '.join(f'{x:.2f}' for x in out['cpu_ratio_rounds'])} (median {out['cpu_ratio_median']:.2f})")
    return out


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.seconds, args.rounds)
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
