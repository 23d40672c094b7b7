"""Run the exchange service under gunicorn on this machine (`gitlab-sts serve`, the demo, tests)."""

from __future__ import annotations

import importlib.resources
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import KEYSET_FILE, development_ring, render_keyring
from gitlab_sts.core.settings import TokenSettings, parse_settings

GUNICORN_CONF = Path(str(importlib.resources.files("gitlab_sts.service").joinpath("gunicorn.conf.py")))


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_development_keys(directory: Path, algorithm: str = TokenSettings().algorithm) -> Path:
    """Write a fresh one-key ring for development (never for production)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEYSET_FILE
    path.write_text(render_keyring(development_ring(datetime.now(UTC), algorithm)))
    path.chmod(0o600)
    return directory


def configured_algorithm(settings: Path) -> str:
    """tokens.algorithm of a settings file; the default when the file does not load (the service then says why)."""
    try:
        return parse_settings(settings.read_text(), settings.name).tokens.algorithm
    except (OSError, ConfigError):
        return TokenSettings().algorithm


def service_env(settings: Path, bindings: Path, keys: Path | None, *, host: str, port: int, workers: int,
                metrics_dir: Path | None = None, state_dir: Path | None = None) -> tuple[dict[str, str], Path | None]:
    """The environment for gunicorn, and a scratch folder for the caller to remove when the service stops.

    Without keys, development keys (of the configured algorithm) are generated into the scratch folder. Without a
    state folder (given or $GITLAB_STS_STATE_DIR) or a metrics folder, the service's last-good copies and
    Prometheus files go there too: a development run leaves nothing behind, least of all a private key.
    """
    env = dict(os.environ)
    if state_dir is None and env.get("GITLAB_STS_STATE_DIR"):
        state_dir = Path(env["GITLAB_STS_STATE_DIR"])
    scratch = None
    if keys is None or state_dir is None or metrics_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="gitlab-sts-dev-"))
    if keys is None:
        assert scratch is not None
        keys = write_development_keys(scratch / "keys", configured_algorithm(settings))
        env["GITLAB_STS_DEVELOPMENT_KEYS"] = "1"
    if state_dir is None:
        assert scratch is not None
        state_dir = scratch / "state"
    if metrics_dir is None:
        assert scratch is not None
        metrics_dir = scratch / "metrics"
        metrics_dir.mkdir()
    env.update({
        "GITLAB_STS_SETTINGS": str(settings.resolve()), "GITLAB_STS_BINDINGS_DIR": str(bindings.resolve()),
        "GITLAB_STS_KEYS_DIR": str(keys.resolve()), "GITLAB_STS_BIND": f"{host}:{port}",
        "GITLAB_STS_WORKERS": str(workers), "GITLAB_STS_STATE_DIR": str(state_dir.resolve()),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir.resolve()),
    })
    return env, scratch


def start_gunicorn(env: dict[str, str], **popen: object) -> subprocess.Popen[bytes]:
    """Start gunicorn with the shipped gunicorn.conf.py."""
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
    return subprocess.Popen(cmd, env=env, **popen)  # type: ignore[call-overload, no-any-return]


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> dict[str, object]:
    """Poll /readyz until it answers 200; raise with the last detail otherwise."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:  # noqa: S310 (loopback URL)
                detail: dict[str, object] = json.loads(response.read())
                return detail
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"the service did not become ready in {timeout} s: {last}")
