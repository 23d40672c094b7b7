"""Faults under concurrent load against the real gunicorn service and the fake GitLab process.

(Outages, garbage and rate limits of GitLab's JWKS are in tests/service/test_gitlab_keys.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import requests

from gitlab_sts.core.keys import KEYSET_FILE
from tests.service.harness import (
    GRANT,
    JWT_TYPE,
    BackgroundThreads,
    FakeGitLabProcess,
    Service,
    eventually,
    start_service,
)

SUBJECT = "system:gitlabawsbinding:team-payments:deploy-staging"


def _staging(svc: Service) -> str:
    return svc.job_token(environment="staging", environment_protected="false")


class Load(BackgroundThreads):
    """Threads exchanging tokens in a loop; every answer is kept for checking."""

    def __init__(self, svc: Service, tokens: Callable[[], list[str]], threads: int = 4) -> None:
        self.svc = svc
        self.tokens = tokens
        super().__init__()
        self.answers: list[tuple[int, dict[str, Any] | None]] = []
        self.connection_errors = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            choices = self.tokens()
            token = choices[(n + i) % len(choices)]
            n += 1
            form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE}
            try:
                r = session.post(self.svc.url + "/v1/token", data=form, timeout=15)
            # A worker killed mid-answer leaves the connection refused, reset or cut inside the body.
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                with self.lock:
                    self.connection_errors += 1
                session = requests.Session()
                continue
            try:
                body = r.json()
            except ValueError:
                body = None
            with self.lock:
                self.answers.append((r.status_code, body))

    def statuses(self) -> Counter[int]:
        """How many answers of each HTTP status."""
        return Counter(status for status, _ in self.answers)


def _check_tokens(svc: Service, answers: list[tuple[int, dict[str, Any] | None]]) -> int:
    """Every issued token verifies against the service's JWKS and names the right binding; returns the count."""
    keys = pyjwt.PyJWKClient(svc.url + "/.well-known/jwks.json")
    issued = 0
    for status, body in answers:
        if status != 200:
            continue
        assert body is not None
        key = keys.get_signing_key_from_jwt(body["access_token"])
        claims = pyjwt.decode(body["access_token"], key, algorithms=["RS256", "ES256"], audience="sts.amazonaws.com",
                              issuer=svc.url)
        assert claims["sub"] == SUBJECT and body["binding"] == "team-payments/deploy-staging"
        issued += 1
    return issued


def test_slow_gitlab_is_bounded_by_the_jwks_timeout(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    fake.control(mode="slow")  # GitLab answers after 3 s
    svc = start_service(tmp_path, fake, workers=1, jwks={"timeoutSeconds": 1, "refetchIntervalSeconds": 30})
    try:
        token = _staging(svc)
        started = time.monotonic()
        answer = svc.exchange(token)
        elapsed = time.monotonic() - started
        assert answer.status_code == 503 and answer.json()["error"] == "temporarily_unavailable"
        assert elapsed < 2.5, elapsed  # the 1 s timeout, not GitLab's 3 s
        # Within the retry interval the next caller is not made to wait again.
        started = time.monotonic()
        assert svc.exchange(token).status_code == 503
        assert time.monotonic() - started < 0.5
        assert svc.metric("gitlab_sts_jwks_fetches_total", result="error") == 1
        ready = requests.get(svc.url + "/readyz", timeout=10).json()
        assert "timed out" in ready["gitlab"][fake.issuer]["last_error"]
    finally:
        svc.stop()
        fake.stop()


def test_gitlab_key_rotation_mid_load(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=2, jwks={"refetchIntervalSeconds": 1})
    try:
        tokens = [_staging(svc)]
        started = time.monotonic()
        with Load(svc, lambda: tokens, threads=6) as load:
            time.sleep(1.5)  # past the 1 s refetch interval of the first fetch
            fake.control(rotate=True)  # a new CI key signs from now on; the old one stays published
            tokens.append(_staging(svc))  # tokens of both keys are in flight from here on
            time.sleep(1.5)
        assert load.statuses() == Counter({200: len(load.answers)}), load.statuses()
        assert load.connection_errors == 0
        assert _check_tokens(svc, load.answers) == len(load.answers) > 20
        # One fetch per worker at start and one for the new kid; a new-kid request that arrives while an older fetch
        # is in flight waits for a fetch of its own (#12), so a worker may fetch once more. The bound that matters:
        # at most one fetch per second per worker (refetchIntervalSeconds), never one per request.
        elapsed = time.monotonic() - started
        fetches = svc.metric("gitlab_sts_jwks_fetches_total", result="ok")
        assert 2 <= fetches <= 2 * (elapsed + 1), (fetches, elapsed)
        assert fetches * 5 < len(load.answers)
    finally:
        svc.stop()
        fake.stop()


def test_config_files_broken_mid_load_keep_serving_the_last_good(fake_gitlab: FakeGitLabProcess,
                                                                 tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab, workers=2)
    try:
        token = _staging(svc)
        settings = svc.settings_path.read_bytes()
        keyset = (svc.keys_dir / KEYSET_FILE).read_bytes()
        binding = (svc.bindings_dir / "deploy-staging.yaml").read_bytes()
        seen_errors: set[str] = set()
        with Load(svc, lambda: [token]) as load:
            for breakage in ("truncate", "delete", "garbage"):
                if breakage == "truncate":  # a write caught half way
                    svc.settings_path.write_bytes(settings[: len(settings) // 2])
                    (svc.keys_dir / KEYSET_FILE).write_bytes(keyset[: len(keyset) // 3])
                    (svc.bindings_dir / "deploy-staging.yaml").write_bytes(binding[: len(binding) // 2])
                elif breakage == "delete":
                    svc.settings_path.unlink()
                    (svc.keys_dir / KEYSET_FILE).unlink()
                else:
                    svc.settings_path.write_bytes(b"\x00\xff" * 100)
                    (svc.keys_dir / KEYSET_FILE).write_bytes(b"[]")
                    (svc.bindings_dir / "deploy-staging.yaml").write_bytes(b"kind: GitLabAWSBinding\nspec: [")
                detail = eventually(lambda: (d := requests.get(svc.url + "/readyz", timeout=10).json())["errors"]
                                    and d)
                seen_errors.update(detail["errors"])
                svc.settings_path.write_bytes(settings)
                (svc.keys_dir / KEYSET_FILE).write_bytes(keyset)
                (svc.bindings_dir / "deploy-staging.yaml").write_bytes(binding)
                eventually(lambda: not requests.get(svc.url + "/readyz", timeout=10).json()["errors"])
        statuses = load.statuses()
        # No 500s: broken settings and keys files keep the last good version. A manifest cut at a line
        # boundary can still parse as an incomplete binding: that binding alone is rejected (reported in
        # /readyz) and its jobs are denied (403 invalid_target) until the file is whole again.
        assert set(statuses) <= {200, 403} and statuses[200] > 20, statuses
        assert all(body and body["error"] == "invalid_target" for status, body in load.answers if status == 403)
        assert load.connection_errors == 0
        assert _check_tokens(svc, load.answers) == statuses[200]
        assert {"settings", "keys"} <= seen_errors
        assert svc.metric("gitlab_sts_config_reloads_total", result="error") >= len(seen_errors)
        log = svc.log()
        # A worker with the last good version in memory says it keeps it; one whose first load met a broken
        # file (it booted late, under load) says it had none yet and that it took the copy a sibling saved.
        assert ("config reload failed, keeping the last good version" in log
                or "using the last good copy saved by an earlier load" in log)
        assert '"status": 500' not in log and "internal_error" not in log
    finally:
        svc.stop()


def _workers(svc: Service) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(svc.process.pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_worker_killed_mid_load(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab, workers=2)
    try:
        token = _staging(svc)
        first = _workers(svc)
        assert len(first) == 2
        with Load(svc, lambda: [token]) as load:
            eventually(lambda: len(load.answers) >= 50)  # under load
            os.kill(first[0], signal.SIGKILL)  # an OOM kill, say
            eventually(lambda: len(set(_workers(svc)) - set(first)) == 1 and len(_workers(svc)) == 2, timeout=20)
            served = len(load.answers)
            eventually(lambda: len(load.answers) >= served + 50)  # and the load goes on after the restart
        statuses = load.statuses()
        # Requests in flight on the killed worker lose their connection (no token); none is answered wrongly.
        assert set(statuses) == {200}, statuses
        issued = _check_tokens(svc, load.answers)
        counted = svc.metric("gitlab_sts_exchanges_total", endpoint="/v1/token", result="issued")
        # Counters of the dead worker are kept: every token a client got is counted (plus at most those
        # minted for connections the kill cut).
        assert issued <= counted <= issued + load.connection_errors + 4
        # Live gauges are not duplicated by the dead worker's leftovers.
        assert svc.metric("gitlab_sts_bindings") == 4
        assert svc.metric("gitlab_sts_config_loaded", file="settings") == 1
        assert "Worker (pid:" in svc.log() or "was sent SIGKILL" in svc.log() or "exited" in svc.log()
    finally:
        svc.stop()
