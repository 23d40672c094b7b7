"""10,000 bindings: matching cost against 10, load/reload times, and requests served during reloads.

Reloads are measured for one changed binding (the usual edit) and for every binding changed (worst case).

    .venv/bin/python bench/bench_scale.py [--n 10000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bindings_gen import edited_document, write_document, write_manifests  # noqa: E402
from common import machine_note, metric_sum, per_call, stack, staging_token, token_form, wrk_run  # noqa: E402

from gitlab_sts.core.bindingdoc import DOC_FILE, load_bindings_dir, render_document  # noqa: E402
from gitlab_sts.core.bindings import BindingIndex  # noqa: E402
from gitlab_sts.core.exchange import ExchangeRequest, decide  # noqa: E402
from gitlab_sts.core.settings import parse_settings  # noqa: E402
from gitlab_sts.core.verify import VerifiedToken  # noqa: E402
from gitlab_sts.service.paths import ConfigPaths  # noqa: E402
from gitlab_sts.service.state import ConfigState  # noqa: E402
from gitlab_sts.testing.gitlab import job_claims  # noqa: E402
from tests.service.harness import keyring_file, one_key_ring, settings_yaml  # noqa: E402

GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"


def _timed(fn: Any, repeat: int = 3) -> float:
    """Best of `repeat` wall-clock runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matching_cost(small: Path, large: Path) -> dict[str, float]:
    """decide() for one token against the 10-binding and the N-binding index (in-process)."""
    settings = parse_settings(f"issuer: {STS}\ngitlab: [{{issuer: {GITLAB}, audiences: [{STS}]}}]\n")
    instance = settings.gitlab[0]
    claims = job_claims(GITLAB, STS, environment="staging", environment_protected="false")
    verified = VerifiedToken(instance=instance, claims=claims, kid=None)
    request = ExchangeRequest("unused")
    out: dict[str, float] = {}
    for label, folder in (("small", small), ("large", large)):
        loaded = load_bindings_dir(folder)
        index = BindingIndex(loaded.bindings, default_issuer=GITLAB)
        decision = decide(verified, index, settings, request)
        assert decision.binding.key == "team-payments/deploy-staging"
        seconds, _ = per_call(lambda index=index: decide(verified, index, settings, request), 1.5)
        out[f"decide_{label}_us"] = seconds * 1e6
        out[f"{label}_bindings"] = len(index)
    out["slowdown"] = out["decide_large_us"] / out["decide_small_us"]
    return out


def _write(folder: Path, raw: bytes) -> None:
    """Replace the document atomically, like a ConfigMap volume update."""
    tmp = folder / (DOC_FILE + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(folder / DOC_FILE)


def _median_reload(state: ConfigState, folder: Path, versions: tuple[bytes, bytes], force: bool) -> float:
    """Median of 5 reloads, each after the document was replaced by the other version."""
    samples = []
    for i in range(5):
        _write(folder, versions[(i + 1) % 2])
        started = time.perf_counter()
        state.reload(force=force)
        samples.append(time.perf_counter() - started)
    _write(folder, versions[0])
    state.reload(force=False)
    return sorted(samples)[2]


def load_times(manifests: Path, document: Path) -> dict[str, float]:
    """load_bindings_dir for the manifests folder and the operator's document, and service reloads."""
    out = {
        "load_manifests_s": _timed(lambda: load_bindings_dir(manifests), 1),
        "load_document_s": _timed(lambda: load_bindings_dir(document)),
    }
    loaded = load_bindings_dir(document)
    out["render_document_s"] = _timed(lambda: render_document(loaded.bindings))
    out["index_s"] = _timed(lambda: BindingIndex(loaded.bindings, default_issuer=GITLAB))
    raw = (document / DOC_FILE).read_bytes()
    one, every = edited_document(raw, 1), edited_document(raw, None)
    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-state-"))
    try:
        (root / "settings.yaml").write_text(settings_yaml(STS, GITLAB))
        keyring_file(root / "keys", one_key_ring())
        shutil.copytree(document, root / "bindings")
        state = ConfigState(ConfigPaths(root / "settings.yaml", root / "bindings", root / "keys"))
        assert state.current().index is not None and len(state.current().index or ()) == len(loaded.bindings)
        folder = root / "bindings"
        # A whole reload (settings, every binding changed, keys re-read): the worst case the 1 s target is about.
        _write(folder, every)
        out["state_reload_s"] = _timed(lambda: state.reload(force=True), 1)
        out["state_reload_median_s"] = _median_reload(state, folder, (raw, every), force=True)
        # What the watcher does when the operator rewrites the document: only the bindings are re-read.
        out["reload_one_changed_median_s"] = _median_reload(state, folder, (raw, one), force=False)
        out["reload_all_changed_median_s"] = _median_reload(state, folder, (raw, every), force=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _while_rewriting(svc: Any, form: str, versions: tuple[bytes, bytes], label: str, seconds: float,
                     connections: int) -> dict[str, Any]:
    """wrk on /v1/token while the document alternates between two versions every 3 s."""
    reloads_before = metric_sum(svc, "gitlab_sts_config_reloads_total", file="bindings", result="ok")
    stop = threading.Event()
    writes = 0

    def rewrite() -> None:
        nonlocal writes
        while not stop.wait(3.0):
            writes += 1
            _write(svc.bindings_dir, versions[writes % 2])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        busy = wrk_run(label, svc.url + "/v1/token", connections=connections, seconds=seconds, form=form)
    finally:
        stop.set()
        writer.join()
    time.sleep(2.5)  # let the last write be picked up
    reloads = metric_sum(svc, "gitlab_sts_config_reloads_total", file="bindings", result="ok") - reloads_before
    return {"load": busy, "document_writes": writes, "reloads_ok_all_workers": reloads}


def reload_under_load(document: Path, seconds: float, connections: int = 16) -> dict[str, Any]:
    """wrk on /v1/token against N bindings: quiet, then while the document is rewritten every 3 s.

    Two kinds of rewrite: one binding changed (the usual edit) and every generated binding changed.
    """
    raw = (document / DOC_FILE).read_bytes()
    n = len(load_bindings_dir(document).bindings)
    with stack(workers=2, bindings=document) as svc:
        form = token_form(staging_token(svc))
        wrk_run("warm-up", svc.url + "/v1/token", connections=connections, seconds=2, form=form)
        quiet = wrk_run(f"/v1/token, {n} bindings", svc.url + "/v1/token",
                        connections=connections, seconds=seconds, form=form)
        one = _while_rewriting(svc, form, (raw, edited_document(raw, 1)), "/v1/token, 1 binding changed/3 s",
                               seconds, connections)
        every = _while_rewriting(svc, form, (raw, edited_document(raw, None)), "/v1/token, all changed/3 s",
                                 seconds, connections)
        errors = metric_sum(svc, "gitlab_sts_config_reloads_total", file="bindings", result="error")
    return {"quiet": quiet.as_dict(), "reloading": one["load"].as_dict(), "reloading_full": every["load"].as_dict(),
            "document_writes": one["document_writes"], "reloads_ok_all_workers": one["reloads_ok_all_workers"],
            "document_writes_full": every["document_writes"],
            "reloads_ok_all_workers_full": every["reloads_ok_all_workers"], "reload_errors": errors,
            "lines": [quiet.line(), one["load"].line(), every["load"].line()]}


def run(n: int = 10000, seconds: float = 8.0) -> dict[str, Any]:
    """All scale measurements; returns the numbers."""
    print(f"# bench_scale: {machine_note()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-scale-"))
    try:
        started = time.perf_counter()
        small = write_manifests(root / "small", 10)
        manifests = write_manifests(root / "manifests", n)
        document = write_document(root / "document", manifests)
        print(f"generated {n} manifests and the bindings document in {time.perf_counter() - started:.1f} s "
              f"({(document / DOC_FILE).stat().st_size // 1024} KiB)", flush=True)
        match = matching_cost(small, document)
        print(f"decide(): {match['decide_small_us']:.0f} us with {match['small_bindings']:.0f} bindings, "
              f"{match['decide_large_us']:.0f} us with {match['large_bindings']:.0f} "
              f"(x{match['slowdown']:.2f})", flush=True)
        loads = load_times(manifests, document)
        print(f"load_bindings_dir: {n} manifests {loads['load_manifests_s']:.2f} s, bindings.json "
              f"{loads['load_document_s']:.2f} s; render {loads['render_document_s']:.2f} s, index "
              f"{loads['index_s']:.3f} s; full service reload (every binding changed) "
              f"{loads['state_reload_s']:.2f} s, median {loads['state_reload_median_s']:.2f} s (target < 1 s)",
              flush=True)
        print(f"bindings reload by the watcher, median: one binding changed "
              f"{loads['reload_one_changed_median_s'] * 1000:.0f} ms, every binding changed "
              f"{loads['reload_all_changed_median_s'] * 1000:.0f} ms", flush=True)
        under = reload_under_load(document, seconds)
        for line in under.pop("lines"):
            print(line, flush=True)
        print(f"document rewritten {under['document_writes']} + {under['document_writes_full']} times; reloads "
              f"seen by workers: {under['reloads_ok_all_workers']:.0f} + {under['reloads_ok_all_workers_full']:.0f}, "
              f"reload errors: {under['reload_errors']:.0f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"machine": machine_note(), "n": n, "matching": match, "loads": loads, "reload_under_load": under}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.n, args.seconds)
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
