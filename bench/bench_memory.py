"""Memory and convergence at 100 / 1,000 / 10,000 bindings, each with its own CEL condition (the worst case).

    .venv/bin/python bench/bench_memory.py breakdown [--n 10000]     # where the memory goes (tracemalloc, types)
    .venv/bin/python bench/bench_memory.py operator [--n 10000]      # operator process vs KMock: RSS, convergence
    .venv/bin/python bench/bench_memory.py service [--n 10000]       # real gunicorn, 2 workers: RSS per worker
    .venv/bin/python bench/bench_memory.py all [--sizes 100,1000,10000]

The operator runs as its own process (its RSS is its own) against bench/kubestub.py, a minimal Kubernetes API
served from this process (KMock's request matching costs O(requests so far) per request: too slow at 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import gzip
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/operator"))
sys.path.insert(0, str(ROOT))

API = "gitlab-sts.io/v1alpha1"
PLURAL = "gitlabawsbindings"
SETTINGS = """
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
tokens: {lifetime: 900, maxLifetime: 3600}
"""


def cel_spec(i: int, variant: int = 0) -> dict[str, Any]:
    """The i-th binding's spec: its own project, role and CEL condition (no two conditions alike)."""
    return {
        "project": {"path": f"group-{i % 97}/project-{i}"},
        "rules": {"refs": ["main", "release/*"], "protectedRef": True,
                  "condition": f'claims.user_login != "bot-{i}" && (claims.pipeline_source in ["push", "web"] '
                               f'|| claims.ref.startsWith("hotfix-{i}-"))'},
        "aws": {"roleArn": f"arn:aws:iam::123456789012:role/deploy-{i}{f'-v{variant}' if variant else ''}",
                "sessionTags": ["project_path", "ref"], "sourceIdentity": "user_login"},
    }


def cel_manifest(i: int, generation: int = 1, variant: int = 0) -> dict[str, Any]:
    """A GitLabAWSBinding object for cel_spec(i), spread over 10 namespaces."""
    return {"apiVersion": API, "kind": "GitLabAWSBinding",
            "metadata": {"name": f"binding-{i:05d}", "namespace": f"team-{i % 10}", "generation": generation},
            "spec": cel_spec(i, variant)}


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def pss_mib(pid: int) -> float:
    """Proportional set size in MiB (shared pages split among the processes sharing them)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- breakdown -----------------------------------------------------------------------------------------------


def _top(snapshot: tracemalloc.Snapshot, limit: int = 8) -> list[tuple[str, float]]:
    stats = snapshot.statistics("filename")
    out = []
    for stat in stats[:limit]:
        name = stat.traceback[0].filename
        for marker in ("site-packages/", "/src/"):
            if marker in name:
                name = name.split(marker, 1)[1]
        out.append((name, stat.size / 2**20))
    return out


def _types(before: Counter[str], limit: int = 8) -> list[tuple[str, int]]:
    after = Counter(type(o).__name__ for o in gc.get_objects())
    return (after - before).most_common(limit)


def breakdown(n: int) -> dict[str, Any]:
    """tracemalloc by file and gc object counts by type: the operator's memo, then the service's loaded bindings."""
    from gitlab_sts.core.bindingdoc import parse_document
    from gitlab_sts.core.bindings import BindingIndex
    from gitlab_sts.core.settings import parse_settings
    from gitlab_sts.operator.evaluation import Context
    from gitlab_sts.operator.memo import BindingMemo

    out: dict[str, Any] = {"n": n}
    manifests = [cel_manifest(i) for i in range(n)]
    gc.collect()
    types0 = Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.start(1)
    memo = BindingMemo(Context.from_settings(parse_settings(SETTINGS)))
    for m in manifests:
        meta = m["metadata"]
        memo.upsert(memo.evaluate(meta["namespace"], meta["name"], m["spec"], 1))
    data, binary, _digest = memo.payload()
    gc.collect()
    snap = tracemalloc.take_snapshot()
    out["operator_traced_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
    out["operator_by_file"] = _top(snap)
    out["operator_types"] = _types(types0)
    raw = (data.get("bindings.json") or "").encode()
    if not raw:
        import gzip
        raw = gzip.decompress(binary["bindings.json.gz"])
    del memo, data, binary, snap
    gc.collect()
    tracemalloc.stop()
    types0 = Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.start(1)
    loaded = parse_document(raw, "bindings.json")
    index = BindingIndex(loaded.bindings, default_issuer="https://gitlab.example.com")
    gc.collect()
    snap = tracemalloc.take_snapshot()
    out["service_traced_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
    out["service_by_file"] = _top(snap)
    out["service_types"] = _types(types0)
    out["document_bytes"] = len(raw)
    tracemalloc.stop()
    del loaded, index
    return out


def print_breakdown(result: dict[str, Any]) -> None:
    """Human-readable breakdown."""
    print(f"== memory breakdown, {result['n']} bindings, each with its own CEL condition")
    for part in ("operator", "service"):
        print(f"{part}: {result[part + '_traced_mib']:.1f} MiB traced (tracemalloc, after gc)")
        for name, mib in result[part + "_by_file"]:
            print(f"   {mib:8.1f} MiB  {name}")
        print("   new objects by type: " + ", ".join(f"{t} {c:,}" for t, c in result[part + "_types"]))
    print(f"document: {result['document_bytes'] / 2**20:.1f} MiB of JSON")


# -- operator as a process against KMock -------------------------------------------------------------------


if TYPE_CHECKING:
    from bench.kubestub import KubeStub


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OperatorBench:
    """The API stand-in in this process, the operator (`python -m gitlab_sts.operator`) as a child process."""

    def __init__(self, k8s: KubeStub, url: str, root: Path) -> None:
        self.k8s = k8s
        self.root = root
        (root / "settings.yaml").write_text(SETTINGS)
        (root / "kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": url.rstrip("/")}}],
            "users": [{"name": "u", "user": {"token": "bench"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}],
        }))
        self.proc: asyncio.subprocess.Process | None = None
        self.peak = 0.0

    async def start(self) -> float:
        """Start the operator; returns the start time (perf_counter)."""
        env = {**os.environ, "KUBECONFIG": str(self.root / "kubeconfig"), "GITLAB_STS_CONFIG_DIR": str(self.root),
               "GITLAB_STS_NAMESPACE": "gitlab-sts", "GITLAB_STS_OPERATOR_METRICS_PORT": "0",
               "GITLAB_STS_OPERATOR_LIVENESS": f"http://127.0.0.1:{_free_port()}/healthz"}
        log = (self.root / "operator.log").open("ab")
        started = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gitlab_sts.operator", env=env,
                                                         stdout=log, stderr=log)
        return started

    def rss(self) -> tuple[float, float]:
        """(RSS, peak RSS) of the operator process in MiB."""
        assert self.proc is not None
        now, peak = rss_mib(self.proc.pid)
        self.peak = max(self.peak, peak)
        return now, peak

    def cpu(self) -> float:
        """CPU seconds the operator process used so far."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        """SIGINT (kopf's graceful stop), then wait."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def bindings(self) -> list[dict[str, Any]]:
        """Every binding object in the API stand-in."""
        return [obj for (plural, _ns, _name), obj in self.k8s.objects.items() if plural == PLURAL]

    def statuses_match(self, want: dict[tuple[str, str], int]) -> int:
        """How many of the wanted (namespace, name) -> generation are Ready at that generation."""
        hits = 0
        for raw in self.bindings():
            meta = raw.get("metadata", {})
            gen = want.get((meta.get("namespace"), meta.get("name")))
            if gen is None:
                continue
            status = raw.get("status") or {}
            conds = status.get("conditions") or [{}]
            if status.get("observedGeneration") == gen and conds[0].get("status") == "True":
                hits += 1
        return hits

    def config(self) -> dict[str, str]:
        """(namespace/name) -> roleArn of the bindings ConfigMap's document ({} when absent)."""
        raw = self.k8s.objects.get(("configmaps", "gitlab-sts", "gitlab-sts-bindings"))
        if raw is None:
            return {}
        text = (raw.get("data") or {}).get("bindings.json")
        if text is None:
            text = gzip.decompress(base64.b64decode(raw["binaryData"]["bindings.json.gz"])).decode()
        doc = json.loads(text)
        return {f"{b['namespace']}/{b['name']}": b["spec"]["aws"]["roleArn"] for b in doc["bindings"]}

    async def until(self, check: Any, timeout: float, what: str) -> float:
        """Poll check() (sampling RSS) until true; returns perf_counter at success."""
        deadline = time.perf_counter() + timeout
        while True:
            self.rss()
            if check():
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def _create_all(url: str, objs: list[dict[str, Any]], concurrency: int = 16) -> float:
    import aiohttp

    queue = list(reversed(objs))
    async with aiohttp.ClientSession(base_url=url) as session:
        async def worker() -> None:
            while queue:
                obj = queue.pop()
                ns = obj["metadata"]["namespace"]
                async with session.post(f"/apis/{API}/namespaces/{ns}/{PLURAL}", json=obj) as resp:
                    assert resp.status < 300, await resp.text()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter()


async def _patch(url: str, obj: dict[str, Any]) -> int:
    """Change a binding's spec; returns the generation the API server gave it."""
    import aiohttp

    meta = obj["metadata"]
    async with aiohttp.ClientSession(base_url=url) as session, session.patch(
            f"/apis/{API}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}",
            data=json.dumps({"spec": obj["spec"]}), headers={"Content-Type": "application/merge-patch+json"}) as resp:
        assert resp.status < 300, await resp.text()
        return int((await resp.json())["metadata"]["generation"])


async def operator_run(n: int, edits: int = 200, timeout: float = 900) -> dict[str, Any]:
    """Burst of n creates, restart with `edits` changes, one edit during the restart's re-list; RSS and CPU."""
    from bench.kubestub import KubeStub, serve

    out: dict[str, Any] = {"n": n}
    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-op-"))
    k8s = KubeStub()
    async with serve(k8s) as url:
        bench = OperatorBench(k8s, url, root)
        try:
            await bench.start()
            await bench.until(lambda: ("configmaps", "gitlab-sts", "gitlab-sts-bindings") in k8s.objects, 120,
                              "empty start")
            out["rss_empty_mib"] = bench.rss()[0]
            cpu0 = bench.cpu()
            objs = [cel_manifest(i) for i in range(n)]
            first = time.perf_counter()
            last = await _create_all(url, objs)
            want = {(o["metadata"]["namespace"], o["metadata"]["name"]): 1 for o in objs}
            ready_at = await bench.until(lambda: bench.statuses_match(want) == n, timeout, "burst Ready")
            config_at = await bench.until(lambda: len(bench.config()) == n, timeout, "burst in config")
            out["burst_apply_s"] = last - first
            out["burst_ready_after_last_apply_s"] = ready_at - last
            out["burst_config_after_last_apply_s"] = config_at - last
            out["burst_cpu_s"] = bench.cpu() - cpu0
            out["cpu_ms_per_binding_event"] = out["burst_cpu_s"] / n * 1000
            out["rss_after_burst_mib"], out["peak_after_burst_mib"] = bench.rss()
            await bench.stop()

            # Restart: `edits` bindings change while the operator is down.
            rng = random.Random(14)
            changed = rng.sample(range(n), min(edits, n))
            want2 = {}
            for i in changed:
                want2[f"team-{i % 10}", f"binding-{i:05d}"] = await _patch(url, cel_manifest(i, variant=2))
            bench.peak = 0.0
            started = await bench.start()
            roles = {f"team-{i % 10}/binding-{i:05d}": cel_spec(i, 2)["aws"]["roleArn"] for i in changed}

            def config_has_edits() -> bool:
                cfg = bench.config()
                return all(cfg.get(k) == v for k, v in roles.items())

            # One more edit while the restarted operator replays its listing (the index is still being built):
            # made as soon as the watch is open, which the operator opens right after listing, before replaying.
            await bench.until(lambda: any(w[0] == PLURAL for w in k8s._watchers), 120, "watch open")
            out["watch_open_after_start_s"] = time.perf_counter() - started
            single = n // 2 + 1
            edit_at = time.perf_counter()
            single_key = {(f"team-{single % 10}", f"binding-{single:05d}"): await _patch(url, cel_manifest(single,
                                                                                                          variant=3))}
            single_at = await bench.until(lambda: bench.statuses_match(single_key) == 1, timeout, "single edit")
            restart_ready = await bench.until(lambda: bench.statuses_match(want2) == len(want2), timeout,
                                              "restart statuses")
            restart_config = await bench.until(config_has_edits, timeout, "restart config")
            out["restart_edits"] = len(changed)
            out["restart_statuses_s"] = restart_ready - started
            out["restart_config_s"] = restart_config - started
            out["edit_during_relist_ready_s"] = single_at - edit_at
            out["edit_during_relist_replay_left"] = "yes" if len(bench.config()) < n else "no"
            await bench.until(lambda: len(bench.config()) == n, timeout, "restart seeded")
            out["restart_cpu_s"] = bench.cpu()
            # And one edit after the listing: the usual case.
            edit_at = time.perf_counter()
            single_key = {(f"team-{single % 10}", f"binding-{single:05d}"): await _patch(url, cel_manifest(single,
                                                                                                          variant=4))}
            single_at = await bench.until(lambda: bench.statuses_match(single_key) == 1, timeout, "edit after")
            role = cel_spec(single, 4)["aws"]["roleArn"]
            config_at = await bench.until(lambda: bench.config().get(f"team-{single % 10}/binding-{single:05d}")
                                          == role, timeout, "edit after in config")
            out["edit_after_relist_ready_s"] = single_at - edit_at
            out["edit_after_relist_config_s"] = config_at - edit_at
            out["rss_after_restart_mib"], out["peak_after_restart_mib"] = bench.rss()
            out["peak_mib"] = bench.peak
            await bench.stop()
            log = (root / "operator.log").read_text(errors="replace")
            out["log_lines"] = len(log.splitlines())
            out["log_error_lines"] = sum(1 for line in log.splitlines() if '"severity": "error"' in line
                                         or '"severity":"error"' in line)
        except Exception:
            print((root / "operator.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            if bench.proc is not None and bench.proc.returncode is None:
                bench.proc.kill()
            shutil.rmtree(root, ignore_errors=True)
    return out


def print_operator(r: dict[str, Any]) -> None:
    """Human-readable operator numbers."""
    print(f"== operator, {r['n']} bindings with their own CEL condition (process vs KMock)")
    print(f"burst: {r['n']} creates in {r['burst_apply_s']:.1f} s; "
          f"all Ready {r['burst_ready_after_last_apply_s']:.1f} s after the last apply, "
          f"all in the ConfigMap {r['burst_config_after_last_apply_s']:.1f} s after it")
    print(f"CPU: {r['burst_cpu_s']:.1f} s for the burst = {r['cpu_ms_per_binding_event']:.2f} ms per binding event"
          " (evaluate, status patch, its echo, ConfigMap renders)")
    print(f"restart with {r['restart_edits']} edits made while down: statuses {r['restart_statuses_s']:.1f} s, "
          f"ConfigMap {r['restart_config_s']:.1f} s after start; CPU {r['restart_cpu_s']:.1f} s")
    print(f"one edit during the restart's listing: Ready after {r['edit_during_relist_ready_s']:.2f} s; "
          f"one edit after it: Ready {r['edit_after_relist_ready_s']:.2f} s, "
          f"ConfigMap {r['edit_after_relist_config_s']:.2f} s")
    print(f"RSS: empty {r['rss_empty_mib']:.0f} MiB, after burst {r['rss_after_burst_mib']:.0f} MiB, after restart "
          f"{r['rss_after_restart_mib']:.0f} MiB; peak {r['peak_mib']:.0f} MiB")
    print(f"log: {r['log_lines']} lines, {r['log_error_lines']} at error level")


# -- service on real gunicorn --------------------------------------------------------------------------------


def service_run(n: int, workers: int = 2, requests_made: int = 50) -> dict[str, Any]:
    """gunicorn (2 workers) loading the operator's document of n bindings: RSS and PSS per process."""
    from bench.common import stack
    from gitlab_sts.core.bindingdoc import DOC_FILE, render_entries
    from gitlab_sts.core.settings import parse_settings
    from gitlab_sts.operator.evaluation import Context, evaluate

    ctx = Context.from_settings(parse_settings(SETTINGS))
    texts = []
    for i in range(n):
        m = cel_manifest(i)
        ev = evaluate(m["metadata"]["namespace"], m["metadata"]["name"], m["spec"], 1, ctx)
        assert ev.entry is not None
        texts.append((m["metadata"]["namespace"], m["metadata"]["name"], ev.entry))
    raw, _digest = render_entries([t for _ns, _name, t in sorted(texts)])
    folder = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-doc-"))
    (folder / DOC_FILE).write_bytes(raw)
    out: dict[str, Any] = {"n": n, "workers": workers}
    try:
        with stack(workers=workers, bindings=folder) as svc:
            master = svc.process.pid

            def measure(label: str) -> None:
                kids = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
                out[f"{label}_master_rss_mib"] = rss_mib(master)[0]
                out[f"{label}_worker_rss_mib"] = [rss_mib(k)[0] for k in kids]
                out[f"{label}_worker_peak_mib"] = [rss_mib(k)[1] for k in kids]
                out[f"{label}_pod_pss_mib"] = pss_mib(master) + sum(pss_mib(k) for k in kids)
                out[f"{label}_pod_rss_mib"] = rss_mib(master)[0] + sum(rss_mib(k)[0] for k in kids)

            measure("loaded")
            for j in range(requests_made):  # each exchange evaluates one binding's condition: compiled on use
                i = (j * 7919) % n
                token = svc.job_token(project_path=f"group-{i % 97}/project-{i}", project_id=str(10 + i))
                svc.exchange(token)
            measure("served")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def print_service(r: dict[str, Any]) -> None:
    """Human-readable service numbers."""
    print(f"== exchange service, {r['n']} bindings, gunicorn with {r['workers']} workers")
    for label in ("loaded", "served"):
        workers = ", ".join(f"{v:.0f}" for v in r[f"{label}_worker_rss_mib"])
        peaks = ", ".join(f"{v:.0f}" for v in r[f"{label}_worker_peak_mib"])
        print(f"{label}: master {r[f'{label}_master_rss_mib']:.0f} MiB, workers {workers} MiB (peaks {peaks}); "
              f"pod RSS sum {r[f'{label}_pod_rss_mib']:.0f} MiB, PSS sum {r[f'{label}_pod_pss_mib']:.0f} MiB")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["breakdown", "operator", "service", "all"])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    sizes = [int(s) for s in args.sizes.split(",")] if args.what == "all" else [args.n]
    for n in sizes:
        if args.what == "breakdown":
            results[f"breakdown_{n}"] = breakdown(n)
            print_breakdown(results[f"breakdown_{n}"])
        if args.what in ("operator", "all"):
            results[f"operator_{n}"] = asyncio.run(operator_run(n))
            print_operator(results[f"operator_{n}"])
        if args.what in ("service", "all"):
            results[f"service_{n}"] = service_run(n)
            print_service(results[f"service_{n}"])
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
