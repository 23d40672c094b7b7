"""Run every benchmark (`make bench`) and print a summary against the targets.

    .venv/bin/python bench/run.py [--seconds 10] [--quick]

Writes the numbers to bench/results.json as well. bench/bench_operator.py (the operator at scale) is run
by its own command; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http  # noqa: E402
import bench_scale  # noqa: E402
from common import ensure_wrk, machine_note  # noqa: E402


def _mark(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def summary(results: dict[str, Any]) -> list[str]:
    """One line per target."""
    lines = []
    for alg in ("RS256", "ES256"):
        r = results.get(f"http_{alg}")
        if not r:
            continue
        token, healthz = r["token"], r["healthz"]
        lines += [
            f"[{alg}] /v1/token {token['rps']:.0f} req/s vs /healthz {healthz['rps']:.0f} req/s: ratio "
            f"{r['ratio_token_to_healthz']:.2f} (target >= 0.50: {_mark(r['ratio_token_to_healthz'] >= 0.5)})",
            f"[{alg}] /v1/token p50 {token['p50_ms']:.1f} ms, p99 {token['p99_ms']:.1f} ms at {r['connections']} "
            f"connections, {r['workers']} workers (target p99 < 10 ms: {_mark(token['p99_ms'] < 10)})",
            f"[{alg}] raw verify+sign {r['crypto']['verify_sign_us']:.0f} us per exchange on one core; /v1/token "
            f"reaches {r['ratio_token_to_crypto_ceiling']:.2f} of the crypto-only ceiling of {r['workers']} cores",
            f"[{alg}] GitLab JWKS fetches {r['jwks_fetches_total']:.0f} for {r['tokens_issued']:.0f} exchanges "
            f"(target: none per request, at most one per worker: {_mark(r['jwks_fetches_total'] <= r['workers'])})",
        ]
    sp = results.get("es256_speedup")
    if sp:
        load = results["http_load_average_1m"]
        lines.append(
            f"[ES256 vs RS256] /v1/token rate ratio {sp['token_rps_ratio_median']:.2f} (median of "
            f"{len(sp['token_rps_ratio_rounds'])} alternating rounds of one run, load average {load['min']:.1f}-"
            f"{load['max']:.1f}); signing alone RS256 {sp['sign_us']['RS256']:.0f} us vs ES256 "
            f"{sp['sign_us']['ES256']:.0f} us")
    s = results.get("scale")
    if s:
        m, loads, under = s["matching"], s["loads"], s["reload_under_load"]
        lines += [
            f"[scale] decide() {m['decide_small_us']:.0f} us with {m['small_bindings']:.0f} bindings vs "
            f"{m['decide_large_us']:.0f} us with {m['large_bindings']:.0f} (x{m['slowdown']:.2f}; "
            f"target no measurable slowdown: {_mark(m['slowdown'] < 1.5)})",
            f"[scale] reload of {s['n']} bindings: bindings.json {loads['load_document_s']:.2f} s, whole service "
            f"reload median {loads['state_reload_median_s']:.2f} s (target < 1 s: "
            f"{_mark(loads['state_reload_median_s'] < 1)}); {s['n']} YAML manifests {loads['load_manifests_s']:.2f} s "
            f"(development path)",
            f"[scale] during reloads every 3 s: {under['reloading']['rps']:.0f} req/s, p99 "
            f"{under['reloading']['p99_ms']:.0f} ms, max {under['reloading']['max_ms']:.0f} ms, errors "
            f"{under['reloading']['errors']} (quiet: {under['quiet']['rps']:.0f} req/s, p99 "
            f"{under['quiet']['p99_ms']:.0f} ms); reloads {under['reloads_ok_all_workers']:.0f}, reload errors "
            f"{under['reload_errors']:.0f}",
        ]
    return lines


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured load run")
    parser.add_argument("--quick", action="store_true", help="shorter runs and 2,000 bindings (a smoke test)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating RS256/ES256 rounds of the HTTP benchmark")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    n = 2000 if args.quick else 10000
    print(f"# gitlab-sts benchmarks: {machine_note()}; load generator: {ensure_wrk() or 'python (wrk missing)'}")
    print("# The machine may be shared: compare the ratios measured within one run, not absolute numbers.")
    results: dict[str, Any] = {"machine": machine_note()}
    # Both algorithms in one measurement: two services side by side, rounds alternating between them (each round
    # 2 x seconds of load per algorithm and endpoint, split over the rounds).
    http = bench_http.measure(bench_http.ALGORITHMS, 2 * seconds, 16, 2, rounds=args.rounds)
    results["http_RS256"], results["http_ES256"] = http["RS256"], http["ES256"]
    results["es256_speedup"], results["http_load_average_1m"] = http["es256_speedup"], http["load_average_1m"]
    results["scale"] = bench_scale.run(n, seconds)
    print("\n# Summary")
    for line in summary(results):
        print(line)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"# numbers written to {args.output}")


if __name__ == "__main__":
    main()
