"""Real processes for service tests: the fake GitLab issuer and gunicorn on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import requests

from gitlab_sts.core.keys import KEYSET_FILE, KeyRing, generate_key, render_keyring
from gitlab_sts.localserver import free_port, service_env, start_gunicorn, wait_ready
from gitlab_sts.testing import gitlab

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bindings"


class FakeGitLabProcess:
    """The stand-in GitLab issuer, run as its own process like a real GitLab."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitlab_sts.testing.gitlab"], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.issuer = self.process.stdout.readline().strip()
        assert self.issuer.startswith("http://127.0.0.1:"), self.issuer

    def token(self, aud: str | list[str], *, lifetime: int = 3600, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A job ID token with GitLab's claims (overrides win, None removes a claim)."""
        body = {"aud": aud, "claims": claims, "lifetime": lifetime, "header": header or {}}
        answer = requests.post(self.issuer + gitlab.TOKEN_PATH, json=body, timeout=10)
        answer.raise_for_status()
        return str(answer.json()["token"])

    def sign_raw(self, payload: str, header: dict[str, Any] | None = None) -> str:
        """Sign an arbitrary payload with GitLab's CI key."""
        answer = requests.post(self.issuer + gitlab.TOKEN_PATH, json={"raw_payload": payload, "header": header or {}},
                               timeout=10)
        return str(answer.json()["token"])

    def control(self, **body: Any) -> dict[str, Any]:
        """Switch fault modes or rotate the CI key."""
        answer = requests.post(self.issuer + gitlab.CONTROL_PATH, json=body, timeout=10)
        result: dict[str, Any] = answer.json()
        return result

    def jwks(self) -> dict[str, Any]:
        """GitLab's public JWKS."""
        result: dict[str, Any] = requests.get(self.issuer + gitlab.JWKS_PATH, timeout=10).json()
        return result

    def stop(self) -> None:
        """Stop the process."""
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def keyring_file(directory: Path, ring: KeyRing) -> Path:
    """Write a key ring where the service reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (KEYSET_FILE + ".tmp")
    tmp.write_text(render_keyring(ring))
    tmp.replace(directory / KEYSET_FILE)  # atomic, as a Secret volume update is
    return directory


def one_key_ring(now: datetime | None = None, algorithm: str = "ES256") -> KeyRing:
    """A ring with one key signing now (ES256, as settings default to)."""
    now = now or datetime.now(UTC)
    key = generate_key(algorithm, created_at=now - timedelta(hours=2), activate_at=now - timedelta(hours=1),
                       retire_at=now + timedelta(days=1), remove_at=now + timedelta(days=2))
    return KeyRing((key,))


@dataclass
class Service:
    """A gunicorn-served exchange service with its config folder."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    gitlab: FakeGitLabProcess
    log_file: Any = None
    workers: int = 1

    @property
    def settings_path(self) -> Path:
        """settings.yaml."""
        return self.root / "settings.yaml"

    @property
    def bindings_dir(self) -> Path:
        """The bindings folder."""
        return self.root / "bindings"

    @property
    def keys_dir(self) -> Path:
        """The keys folder."""
        return self.root / "keys"

    def job_token(self, **claims: Any) -> str:
        """A GitLab token for this service's audience."""
        return self.gitlab.token(self.url, **claims)

    def exchange(self, token: str, path: str = "/v1/token", **extra: str) -> requests.Response:
        """POST an RFC 8693 form."""
        form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE, **extra}
        return requests.post(self.url + path, data=form, timeout=15)

    def metric(self, name: str, **labels: str) -> float:
        """A Prometheus series from /metrics summed over the workers, filtered by label values."""
        total = 0.0
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith((name + "{", name + " ")):
                head, value = line.rsplit(" ", 1)
                if all(f'{k}="{v}"' in head for k, v in labels.items()):
                    total += float(value)
        return total

    def reloaded(self, file: str, before: float, timeout: float = 10.0) -> None:
        """Wait until every worker has reloaded file (settings, bindings, keys, pinned) since `before`.

        `before` is metric("gitlab_sts_config_reloads_total", file=file, result="ok") read before the file was
        written: waiting for the watcher's own count instead of a fixed time. Only successful loads count: a
        worker that caught a half-written file counts an error and then an ok, and must not stand in for a
        sibling that has not reloaded yet (a CI run failed that way).
        """
        eventually(lambda: self.metric("gitlab_sts_config_reloads_total", file=file, result="ok")
                   >= before + self.workers, timeout=timeout)

    def replace_settings(self, text: str) -> None:
        """Replace settings.yaml as a mounted volume does (rename, never a half-written file); wait for every worker."""
        before = self.metric("gitlab_sts_config_reloads_total", file="settings", result="ok")
        staged = self.settings_path.with_name(".settings.yaml.new")
        staged.write_text(text)
        staged.replace(self.settings_path)
        self.reloaded("settings", before)

    def log(self) -> str:
        """Everything the service wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def stop(self) -> None:
        """Stop gunicorn."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.log_file is not None:
            self.log_file.close()


def settings_yaml(url: str, issuer: str, **extra: Any) -> str:
    """settings.yaml for a test service."""
    import yaml

    data: dict[str, Any] = {
        "issuer": url,
        "gitlab": [{"issuer": issuer, "audiences": [url]}],
        "tokens": {"lifetime": 900, "maxLifetime": 3600, "audience": "sts.amazonaws.com"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return yaml.safe_dump(data)


def start_service(root: Path, fake: FakeGitLabProcess, *, bindings: Path = EXAMPLES, ring: KeyRing | None = None,
                  workers: int = 2, wait: bool = True, **settings: Any) -> Service:
    """Write a config folder and start gunicorn on a free loopback port."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (root / "settings.yaml").write_text(settings_yaml(url, fake.issuer, **settings))
    shutil.copytree(bindings, root / "bindings", dirs_exist_ok=True)
    keyring_file(root / "keys", ring or one_key_ring())
    metrics_dir = root / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env, _ = service_env(root / "settings.yaml", root / "bindings", root / "keys", host="127.0.0.1", port=port,
                         workers=workers, metrics_dir=metrics_dir, state_dir=root / "state")
    log_path = root / "service.log"
    log_file = log_path.open("wb")
    process = start_gunicorn(env, stdout=subprocess.DEVNULL, stderr=log_file)
    service = Service(url, root, process, log_path, fake, log_file, workers)
    if wait:
        try:
            wait_ready(url, process)
        except RuntimeError:
            service.stop()
            raise RuntimeError("service failed to start:\n" + service.log()) from None
    return service


def eventually(check: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Retry check() until it returns a truthy value or the timeout passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


class BackgroundThreads:
    """Threads (self.threads, set by a subclass) that run from the `with` block's start until self.stop at its end."""

    join_timeout = 30.0

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.join_timeout)
