"""The first load, before gunicorn starts any worker: a broken settings, bindings or keys input stops the start.

A reload keeps the last good version (service/state.py); a start has no last good version to keep, so a
service that started anyway would look alive while refusing every job. Failing here makes Kubernetes show
CrashLoopBackOff with the reason in the log, and `gitlab-sts serve` exit at once with each problem.
Imports core only (no metrics): gunicorn's master process runs this, and counters set here would be
counted as a phantom worker's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import KEYSET_FILE, parse_keyring
from gitlab_sts.core.settings import parse_settings
from gitlab_sts.service.follow import FollowConfig
from gitlab_sts.service.paths import ConfigPaths

# The exit code of a start refused for its configuration (gunicorn's own failures exit 1, usage errors 2).
EXIT_CONFIG = 3


def read_error(path: Path, exc: OSError) -> str:
    """'<path>: cannot read: <reason>', naming the file whatever the OSError carries."""
    return f"{exc.filename or path}: cannot read: {exc.strerror or exc}"


@dataclass(frozen=True)
class Problem:
    """One input that did not load; `absent` when the operator has not written it yet (nothing to parse)."""

    message: str
    absent: bool = False


def first_load_problems(paths: ConfigPaths) -> list[str]:
    """Load settings, bindings and keys once, as a worker will; one line per problem, each naming its file."""
    return [p.message for p in load_problems(paths)]


def load_problems(paths: ConfigPaths, warn: bool = True) -> list[Problem]:
    """The problems of a first load, telling inputs not written yet from inputs that are broken."""
    problems: list[Problem] = []
    try:
        parse_settings(paths.settings.read_bytes().decode(errors="replace"), source=str(paths.settings))
    except OSError as exc:
        problems.append(Problem(read_error(paths.settings, exc)))  # Helm writes settings: never waited for
    except ConfigError as exc:
        problems.append(Problem(str(exc)))
    try:
        loaded = load_bindings_dir(paths.bindings)
    except OSError as exc:
        problems.append(Problem(read_error(paths.bindings, exc)))
    except ConfigError as exc:
        problems.append(Problem(_in_folder(paths.bindings, str(exc)), absent=not paths.bindings.exists()))
    else:
        # A binding that does not compile is refused on its own (the others still serve), not a failed load.
        for bad in loaded.rejected if warn else ():
            print(f"gitlab-sts: warning: {paths.bindings}: binding {bad.key}: {bad.error}", file=sys.stderr)
    keyset = paths.keys / KEYSET_FILE
    try:
        parse_keyring(keyset.read_bytes().decode(errors="replace"), source=str(keyset))
    except FileNotFoundError as exc:
        problems.append(Problem(read_error(keyset, exc), absent=True))
    except OSError as exc:
        problems.append(Problem(read_error(keyset, exc)))
    except ConfigError as exc:
        problems.append(Problem(str(exc)))
    return problems


def _in_folder(folder: Path, message: str) -> str:
    """Bindings messages name the entry (bindings.json, a manifest): put the folder in front when they lack it."""
    return message if message.startswith(str(folder)) else f"{folder}/{message}"


def refuse_start_on_broken_config(paths: ConfigPaths | None = None, out: TextIO | None = None, *,
                                  wait: float | None = None, sleep: Callable[[float], None] = time.sleep,
                                  clock: Callable[[], float] = time.monotonic) -> None:
    """Exit with EXIT_CONFIG, printing each problem, when the first load fails (gunicorn's on_starting hook).

    Keys and bindings that do not exist yet (a fresh install: the operator writes them within seconds) are
    waited for up to `wait` seconds ($GITLAB_STS_START_WAIT_SECONDS, set by the chart below its liveness
    delay); anything present but broken refuses at once.
    """
    paths = paths or ConfigPaths.from_env()
    stream = out or sys.stderr
    if wait is None:
        wait = float(os.environ.get("GITLAB_STS_START_WAIT_SECONDS") or 0)
    deadline = clock() + wait
    following = FollowConfig.from_env() is not None
    if following and not os.environ.get("GITLAB_STS_STATE_DIR"):
        # The follower keeps a copy of the keys Secret; private keys go only into a configured state folder.
        print("gitlab-sts: refusing to start: GITLAB_STS_FOLLOW_API needs GITLAB_STS_STATE_DIR, the private folder "
              "that holds the copy of the signing keys it follows (the chart sets both)", file=stream)
        stream.flush()
        raise SystemExit(EXIT_CONFIG)
    problems = load_problems(paths)
    if following and problems and all(p.absent for p in problems):
        # The pod follows its config objects through the API (service/follow.py): what the volumes lack yet
        # arrives from there within a second of the operator writing it. Start, not ready until then.
        for problem in problems:
            print(f"gitlab-sts: not written yet, following the API for it: {problem.message}", file=stream)
        return
    if problems and all(p.absent for p in problems) and clock() < deadline:
        waiting = "; ".join(p.message for p in problems)
        print(f"gitlab-sts: waiting up to {wait:g} s for the operator to write what is missing: {waiting}",
              file=stream, flush=True)
        while problems and all(p.absent for p in problems) and clock() < deadline:
            sleep(1.0)
            problems = load_problems(paths, warn=False)
    if not problems:
        return
    print("gitlab-sts: refusing to start: the configuration does not load", file=stream)
    for problem in problems:
        print(f"gitlab-sts: error: {problem.message}", file=stream)
    stream.flush()
    raise SystemExit(EXIT_CONFIG)
