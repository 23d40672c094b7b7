"""Garbage-collector pauses in one service process holding N bindings, while requests run and the document reloads.

In-process (Flask test client, no HTTP): two request threads (gunicorn's gthread default) POST /v1/token in
a loop while a third thread rewrites the bindings document (one changed binding, or every binding) and
calls ConfigState.reload like the watcher does. gc.callbacks time every collection. Each policy runs in a
fresh child process, and the policies alternate over --rounds:

- baseline: what the service did before service/gcpolicy.py (no freezing)
- gcpolicy: service.gcpolicy enabled as shipped (collect + gc.freeze() at start, and again after a reload
  once more than REFREEZE_AT objects are outside the permanent generation)
- freeze-each: collect + gc.freeze() after every reload (REFREEZE_AT = 0)
- freeze-nocollect: gc.freeze() after every reload without collecting first (shows what that leaks)
- freeze-once: collect + gc.freeze() once after the first load, never again

    .venv/bin/python bench/bench_gc.py [--n 10000] [--reloads 100] [--every 0.3] [--edit one|all] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from bindings_gen import edited_document, write_document, write_manifests  # noqa: E402

from gitlab_sts.core.bindingdoc import DOC_FILE  # noqa: E402

POLICIES = ("baseline", "gcpolicy", "freeze-each", "freeze-nocollect", "freeze-once")
GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def child(policy: str, document: Path, reloads: int, every: float, edit: str) -> dict[str, Any]:
    """One policy in this process: set up the app, run traffic and reloads, return the numbers."""
    import yaml

    from gitlab_sts.service import gcpolicy
    from gitlab_sts.service.app import create_app
    from gitlab_sts.service.paths import ConfigPaths
    from gitlab_sts.testing.gitlab import FakeGitLab, job_claims
    from tests.service.harness import keyring_file, one_key_ring

    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-gc-"))
    try:
        fake = FakeGitLab()
        fake.issuer = GITLAB
        settings = {"issuer": STS, "gitlab": [{"issuer": GITLAB, "audiences": [STS], "jwks": fake.jwks()}],
                    "tokens": {"lifetime": 900, "maxLifetime": 3600, "audience": "sts.amazonaws.com"}}
        (root / "settings.yaml").write_text(yaml.safe_dump(settings))
        shutil.copytree(document, root / "bindings")
        keyring_file(root / "keys", one_key_ring())
        raw = (root / "bindings" / DOC_FILE).read_bytes()
        versions = (raw, edited_document(raw, 1 if edit == "one" else None))

        events: list[tuple[int, float]] = []  # (generation, seconds) of every collection
        started: list[float] = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                events.append((info["generation"], time.perf_counter() - started[0]))

        if policy in ("freeze-each", "freeze-nocollect"):
            gcpolicy.REFREEZE_AT = 0
        if policy == "freeze-nocollect":
            gcpolicy._collect_and_freeze = gc.freeze  # type: ignore[assignment]  # the variant measured
        app = create_app(ConfigPaths(root / "settings.yaml", root / "bindings", root / "keys"), watch=False)
        state = app.extensions["gitlab_sts"].state
        if policy == "freeze-once":
            gc.collect()
            gc.freeze()
        elif policy != "baseline":
            gcpolicy.enable()  # what gunicorn's post_worker_init does
        good = fake.sign(job_claims(GITLAB, STS, environment="staging", environment_protected="false"))
        denied = fake.sign(job_claims(GITLAB, STS, environment="nowhere"))
        forms = [urllib.parse.urlencode({"grant_type": GRANT, "subject_token": t, "subject_token_type": JWT_TYPE})
                 for t in (good, denied)]
        client = app.test_client()
        for i in range(50):  # warm-up: caches, lazily built objects
            client.post("/v1/token", data=forms[i % 2], content_type="application/x-www-form-urlencoded")
        gc.callbacks.append(on_gc)
        rss_start = _rss_kib()
        rss_after: list[int] = []
        reload_seconds: list[float] = []
        latencies: list[list[float]] = [[], []]
        stop = threading.Event()
        failures: list[str] = []

        def traffic(slot: int) -> None:
            own = app.test_client()
            i = 0
            while not stop.is_set():
                i += 1
                form = forms[1] if i % 10 == 0 else forms[0]  # one request in ten is denied
                t0 = time.perf_counter()
                answer = own.post("/v1/token", data=form, content_type="application/x-www-form-urlencoded")
                latencies[slot].append(time.perf_counter() - t0)
                if answer.status_code not in (200, 403):
                    failures.append(f"{answer.status_code} {answer.get_data(as_text=True)[:200]}")
                    stop.set()

        threads = [threading.Thread(target=traffic, args=(slot,)) for slot in (0, 1)]
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        try:
            for n in range(reloads):
                if stop.wait(every):
                    break
                tmp = root / "bindings" / (DOC_FILE + ".tmp")
                tmp.write_bytes(versions[(n + 1) % 2])
                tmp.replace(root / "bindings" / DOC_FILE)
                t0 = time.perf_counter()
                snap = state.reload(force=False)  # what the watcher thread does on a change
                reload_seconds.append(time.perf_counter() - t0)
                if "bindings" in snap.errors:
                    failures.append(snap.errors["bindings"])
                rss_after.append(_rss_kib())
            time.sleep(every)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - began
        gc.callbacks.remove(on_gc)
        frozen = gc.get_freeze_count()
        tracked = len(gc.get_objects())
        # Garbage cycles hidden in the permanent generation (what freezing leaked): collect what is not
        # frozen first, then what unfreezing hands back.
        gc.collect()
        gc.unfreeze()
        leaked = gc.collect()
        lat = [x for part in latencies for x in part]
        full = [s for g, s in events if g == 2]
        young = [s for g, s in events if g < 2]
        tenth = rss_after[min(9, len(rss_after) - 1)] if rss_after else rss_start
        return {
            "policy": policy, "edit": edit, "reloads": len(reload_seconds), "seconds": round(elapsed, 1),
            "failures": failures[:3],
            "requests": len(lat), "req_per_s": len(lat) / elapsed,
            "latency_p50_ms": _pct(lat, 0.5) * 1e3, "latency_p99_ms": _pct(lat, 0.99) * 1e3,
            "latency_p999_ms": _pct(lat, 0.999) * 1e3, "latency_max_ms": max(lat, default=0) * 1e3,
            "gen2_count": len(full), "gen2_max_ms": max(full, default=0) * 1e3,
            "gen2_p50_ms": _pct(full, 0.5) * 1e3, "gen2_p99_ms": _pct(full, 0.99) * 1e3,
            "gen2_total_ms": sum(full) * 1e3,
            "young_count": len(young), "young_max_ms": max(young, default=0) * 1e3,
            "young_total_ms": sum(young) * 1e3,
            "reload_median_ms": statistics.median(reload_seconds) * 1e3 if reload_seconds else 0,
            "reload_max_ms": max(reload_seconds, default=0) * 1e3,
            "rss_start_mib": rss_start / 1024, "rss_end_mib": (rss_after or [rss_start])[-1] / 1024,
            "rss_growth_after_10_reloads_mib": ((rss_after or [tenth])[-1] - tenth) / 1024,
            "freeze_count_end": frozen, "tracked_end": tracked, "leaked_cyclic_objects": leaked,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


ROWS = (
    ("reloads (edit)", lambda r: f"{r['reloads']} ({r['edit']})"),
    ("requests, req/s", lambda r: f"{r['requests']}, {r['req_per_s']:.0f}"),
    ("gen-2 collections", lambda r: f"{r['gen2_count']}"),
    ("gen-2 pause max / p99 / p50 ms", lambda r: f"{r['gen2_max_ms']:.1f} / {r['gen2_p99_ms']:.1f} / "
                                                 f"{r['gen2_p50_ms']:.1f}"),
    ("gen-2 total ms", lambda r: f"{r['gen2_total_ms']:.0f}"),
    ("gen-0/1 collections, max ms, total ms", lambda r: f"{r['young_count']}, {r['young_max_ms']:.1f}, "
                                                        f"{r['young_total_ms']:.0f}"),
    ("request p50 / p99 / p99.9 / max ms", lambda r: f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} / "
                                                     f"{r['latency_p999_ms']:.1f} / {r['latency_max_ms']:.1f}"),
    ("reload median / max ms", lambda r: f"{r['reload_median_ms']:.0f} / {r['reload_max_ms']:.0f}"),
    ("RSS start -> end MiB", lambda r: f"{r['rss_start_mib']:.0f} -> {r['rss_end_mib']:.0f}"),
    ("RSS growth reload 10 -> end MiB", lambda r: f"{r['rss_growth_after_10_reloads_mib']:+.1f}"),
    ("frozen objects at end", lambda r: f"{r['freeze_count_end']}"),
    ("leaked garbage-cycle objects", lambda r: f"{r['leaked_cyclic_objects']}"),
)


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table, one column per run."""
    head = "| | " + " | ".join(f"{r['policy']} #{r['round']}" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--every", type=float, default=0.3, help="seconds between document rewrites")
    parser.add_argument("--edit", choices=("one", "all"), default="one")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--document", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = child(args.child, Path(args.document), args.reloads, args.every, args.edit)
        print(json.dumps(out))
        return
    work = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-gc-doc-"))
    try:
        started = time.perf_counter()
        document = write_document(work / "document", write_manifests(work / "manifests", args.n))
        print(f"# bench_gc: {args.n} bindings, document written in {time.perf_counter() - started:.1f} s; "
              f"{args.reloads} reloads ({args.edit} changed) every {args.every} s", flush=True)
        results = []
        for round_ in range(1, args.rounds + 1):
            for policy in args.policies.split(","):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", policy, "--document", str(document),
                     "--reloads", str(args.reloads), "--every", str(args.every), "--edit", args.edit],
                    capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["round"] = round_
                results.append(result)
                print(f"{policy} #{round_}: gen-2 {result['gen2_count']} x max {result['gen2_max_ms']:.0f} ms, "
                      f"request p99 {result['latency_p99_ms']:.1f} ms max {result['latency_max_ms']:.0f} ms, "
                      f"RSS {result['rss_start_mib']:.0f} -> {result['rss_end_mib']:.0f} MiB, "
                      f"leaked {result['leaked_cyclic_objects']}", flush=True)
        print(table(results))
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
