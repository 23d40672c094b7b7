"""The exchange's own cost, in-process: the Flask WSGI app called directly with prepared environs.

No sockets, no gunicorn, no test client: what a request costs in this project's code plus Flask/werkzeug.
Each measured path runs `--calls` requests per round; the best round is reported. Time is this process's
CPU time (time.process_time), so that other work on a shared machine inflates it less than wall time.
With `--compare DIR`, the same measurement runs alternately on this tree and on another checkout
(e.g. `git worktree add /tmp/base main`), each in a fresh child process, and the ratio is printed:

    .venv/bin/python bench/bench_inprocess.py [--algorithm ES256] [--rounds 5] [--calls 1500] [--compare DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SOURCE_ROOTS = ("cli/src", "core/src", "service/src", "operator/src")
GITLAB = "https://gitlab.example.com"
STS = "https://sts.example.com"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
PATHS = ("/v1/token", "/v1/token denied", "/v1/explain", "/healthz")


def child(algorithm: str, rounds: int, calls: int) -> dict[str, Any]:
    """Build the app from this process's gitlab_sts and time each path; best seconds per call."""
    import yaml
    from werkzeug.test import EnvironBuilder

    from gitlab_sts.core.keys import KEYSET_FILE, KeyRing, generate_key, render_keyring
    from gitlab_sts.service.app import create_app
    from gitlab_sts.service.paths import ConfigPaths
    from gitlab_sts.testing.gitlab import FakeGitLab, job_claims

    root = Path(tempfile.mkdtemp(prefix="gitlab-sts-bench-inproc-"))
    try:
        fake = FakeGitLab()
        fake.issuer = GITLAB
        settings = {"issuer": STS, "gitlab": [{"issuer": GITLAB, "audiences": [STS], "jwks": fake.jwks()}],
                    "tokens": {"lifetime": 900, "maxLifetime": 3600, "audience": "sts.amazonaws.com",
                               "algorithm": algorithm}}
        (root / "settings.yaml").write_text(yaml.safe_dump(settings))
        shutil.copytree(ROOT / "examples" / "bindings", root / "bindings")
        now = datetime.now(UTC)
        key = generate_key(algorithm, created_at=now - timedelta(hours=2), activate_at=now - timedelta(hours=1),
                           retire_at=now + timedelta(days=1), remove_at=now + timedelta(days=2))
        (root / "keys").mkdir()
        (root / "keys" / KEYSET_FILE).write_text(render_keyring(KeyRing((key,))))
        app = create_app(ConfigPaths(root / "settings.yaml", root / "bindings", root / "keys"), watch=False)

        def form(token: str) -> bytes:
            return urllib.parse.urlencode({"grant_type": GRANT, "subject_token": token,
                                           "subject_token_type": JWT_TYPE}).encode()

        staging = [form(fake.sign(job_claims(GITLAB, STS, environment="staging", environment_protected="false",
                                             job_id=str(1000 + i)))) for i in range(64)]
        denied = [form(fake.sign(job_claims(GITLAB, STS, environment="nowhere", job_id=str(2000 + i))))
                  for i in range(64)]
        bodies = {"/v1/token": ("/v1/token", staging, 200), "/v1/token denied": ("/v1/token", denied, 403),
                  "/v1/explain": ("/v1/explain", staging, 200), "/healthz": ("/healthz", [b""], 200)}
        statuses: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return lambda data: None

        def environs(path: str, forms: list[bytes]) -> list[dict[str, Any]]:
            out = []
            for body in forms:
                method = "GET" if path == "/healthz" else "POST"
                builder = EnvironBuilder(path=path, method=method, data=body or None,
                                         content_type="application/x-www-form-urlencoded" if body else None)
                out.append(builder.get_environ())
            return out

        prepared = {name: (environs(path, forms), forms, status) for name, (path, forms, status) in bodies.items()}
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, (envs, forms, status) in prepared.items():
                n = len(envs)
                statuses.clear()
                started = time.process_time()
                for i in range(calls):
                    environ = dict(envs[i % n])
                    environ["wsgi.input"] = io.BytesIO(forms[i % n])
                    for _chunk in app(environ, start_response):
                        pass
                per_call = (time.process_time() - started) / calls
                wrong = [s for s in statuses if not s.startswith(str(status))]
                if wrong:
                    raise RuntimeError(f"{name}: unexpected status {wrong[0]}")
                best[name] = min(best.get(name, per_call), per_call)
        return {name: seconds * 1e6 for name, seconds in best.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_tree(tree: Path, algorithm: str, rounds: int, calls: int) -> dict[str, float]:
    """One child process importing gitlab_sts from tree's source roots."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(tree / r) for r in SOURCE_ROOTS))
    # Started outside both trees, so neither's root folder is on sys.path ahead of PYTHONPATH.
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--algorithm", algorithm,
                           "--rounds", str(rounds), "--calls", str(calls)],
                          env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child for {tree} failed: {proc.stdout[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=("RS256", "ES256"), default="ES256", help="minted-token algorithm")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per child; the best is kept")
    parser.add_argument("--calls", type=int, default=1500, help="requests per path per round")
    parser.add_argument("--alternations", type=int, default=3, help="child processes per tree, alternating")
    parser.add_argument("--compare", type=Path, help="another checkout to measure alternately with this one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the audit lines are written, then dropped)
        try:
            print(json.dumps(child(args.algorithm, args.rounds, args.calls)))
        except Exception as exc:  # noqa: BLE001 (reported by the parent, whose stderr is not dropped)
            print(f"child failed: {exc!r}")
            raise SystemExit(1) from None
        return
    trees = [("this", ROOT)] + ([("compare", args.compare.resolve())] if args.compare else [])
    load = os.getloadavg()
    print(f"# in-process CPU time per request, {args.algorithm}, best of {args.rounds} x {args.calls} calls per child, "
          f"{args.alternations} alternations; load average {load[0]:.2f} at start")
    best: dict[str, dict[str, float]] = {name: {} for name, _ in trees}
    for _ in range(args.alternations):
        for name, tree in (trees if _ % 2 == 0 else list(reversed(trees))):
            result = run_tree(tree, args.algorithm, args.rounds, args.calls)
            for path, us in result.items():
                best[name][path] = min(best[name].get(path, us), us)
            print(f"{name:8} " + "  ".join(f"{p} {result[p]:.0f} us" for p in PATHS), flush=True)
    for name, _tree in trees:
        print(f"best {name:8} " + "  ".join(f"{p} {best[name][p]:.0f} us" for p in PATHS))
    if args.compare:
        print("ratio this/compare " + "  ".join(f"{p} {best['this'][p] / best['compare'][p]:.3f}" for p in PATHS))
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
