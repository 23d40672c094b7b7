"""The `gitlab-sts` command: serve, demo, check, and the job client."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

# `check --crd` given without a file: the packaged CRD (gitlab_sts.core.crdschema.PACKAGED_CRD).
PACKAGED_CRD = Path("(packaged)")

# Subcommands living in their own modules: (module, function adding the parser).
_PLUGINS = (
    ("gitlab_sts.login", "add_login_parser"),
    ("gitlab_sts.testing.sts", "add_sts_parser"),
    ("gitlab_sts.doctor", "add_doctor_parser"),
    ("gitlab_sts.awspolicy", "add_awspolicy_parser"),
)


def _serve(args: argparse.Namespace) -> int:
    from gitlab_sts.localserver import service_env, start_gunicorn

    if args.keys is None:
        print("gitlab-sts serve: no --keys given; signing with a fresh in-memory key set "
              "(development only: tokens stop verifying when this process ends)", file=sys.stderr)
    env, scratch = service_env(args.settings, args.bindings, args.keys, host=args.host, port=args.port,
                               workers=args.workers)
    process = start_gunicorn(env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return 130
    finally:
        if scratch is not None:  # development keys, last-good copies, metrics: leave nothing in /tmp
            shutil.rmtree(scratch, ignore_errors=True)


def _demo(args: argparse.Namespace) -> int:
    from gitlab_sts.demo import run_demo

    return run_demo(args.bindings)


def _check(args: argparse.Namespace) -> int:
    from gitlab_sts.check import run_check

    return run_check(args)


def _fake_gitlab(args: argparse.Namespace) -> int:
    from gitlab_sts.testing.gitlab import main

    main(["--host", args.host, "--port", str(args.port)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="gitlab-sts", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gitlab-sts {importlib.metadata.version('gitlab-sts')}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the exchange service under gunicorn (development)")
    serve.add_argument("--settings", type=Path, required=True, help="settings.yaml")
    serve.add_argument("--bindings", type=Path, required=True,
                       help="folder of GitLabAWSBinding manifests (or the operator's bindings.json)")
    serve.add_argument("--keys", type=Path, help="folder holding keyset.json (default: fresh development keys)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="the whole exchange on this machine, step by step")
    demo.add_argument("--bindings", type=Path, default=Path("examples/bindings"))
    demo.set_defaults(func=_demo)

    check = sub.add_parser("check", help="evaluate binding manifests against a token or claims, offline")
    check.add_argument("--bindings", type=Path, required=True, help="folder of GitLabAWSBinding manifests")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--claims", type=Path, help="JSON file of GitLab token claims")
    source.add_argument("--token", type=Path, help="file holding a GitLab ID token (signature NOT checked)")
    check.add_argument("--settings", type=Path, help="settings.yaml (for token defaults and caps)")
    # --crd alone uses the CRD shipped inside the package, so it works from any directory (a bindings repository).
    check.add_argument("--crd", type=Path, nargs="?", const=PACKAGED_CRD,
                       help="also validate manifests against the CRD schema (default: the CRD this package ships)")
    check.add_argument("--crd-file", type=Path, help="validate against this CRD file instead (implies --crd)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(func=_check)

    fake = sub.add_parser("fake-gitlab", help="run a local OIDC issuer standing in for GitLab (testing only)")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=0)
    fake.set_defaults(func=_fake_gitlab)

    for module_name, function in _PLUGINS:
        module = importlib.import_module(module_name)
        add: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = getattr(module, function)
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
