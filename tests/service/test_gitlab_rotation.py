"""GitLab rotates its signing key while forged kids flood the service, and while GitLab is down (issue #12)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from gitlab_sts.testing.gitlab import job_claims
from tests.service.harness import BackgroundThreads, FakeGitLabProcess, Service, eventually, start_service

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def _staging(svc: Service) -> str:
    return svc.job_token(environment="staging", environment_protected="false")


def _fresh_connection(svc: Service, token: str) -> requests.Response:
    # A new connection each time, so that both workers see these requests (gunicorn spreads accepts).
    form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT_TYPE}
    return requests.post(svc.url + "/v1/token", data=form, timeout=30, headers={"Connection": "close"})


def _jwks_requests(fake: FakeGitLabProcess) -> int:
    return int(requests.get(fake.issuer + "/-/test/control", timeout=10).json()["jwks_requests"])


class ForgedFlood(BackgroundThreads):
    """Threads sending tokens with random kids, signed by an attacker's key, as fast as answers come."""

    join_timeout = 60.0

    def __init__(self, svc: Service, threads: int = 8) -> None:
        self.svc = svc
        super().__init__()
        self.statuses: Counter[int] = Counter()
        self.key = RSAKey.generate_key(2048, private=True)
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, slot: int) -> None:
        n = 0
        with requests.Session() as session:
            while not self.stop.is_set():
                n += 1
                forged = jwt.encode({"alg": "RS256", "kid": f"forged-{slot}-{n}"},
                                    job_claims(self.svc.gitlab.issuer, self.svc.url), self.key)
                form = {"grant_type": GRANT, "subject_token": forged, "subject_token_type": JWT_TYPE}
                self.statuses[session.post(self.svc.url + "/v1/token", data=form, timeout=30).status_code] += 1


def test_rotation_under_a_forged_kid_flood_fails_no_genuine_token(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=2, jwks={"refetchIntervalSeconds": 1})
    try:
        for _ in range(4):
            assert _fresh_connection(svc, _staging(svc)).status_code == 200
        before = _jwks_requests(fake)
        started = time.monotonic()
        with ForgedFlood(svc) as flood:
            time.sleep(1.5)  # forged kids have been triggering fetches for a while
            fake.control(rotate=True)  # GitLab's admin rotates the CI key: tokens are signed with a new kid
            genuine = [_fresh_connection(svc, _staging(svc)) for _ in range(8)]
            # Waiting requests wait in greenlets: the worker goes on answering (nothing blocks its loop).
            probes = [requests.get(svc.url + "/healthz", timeout=5, headers={"Connection": "close"}).status_code
                      for _ in range(6)]
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        fetches = _jwks_requests(fake) - before
        assert [a.status_code for a in genuine] == [200] * 8, [a.text for a in genuine if a.status_code != 200]
        assert set(flood.statuses) == {400} and flood.statuses[400] > 10, flood.statuses
        assert probes == [200] * 6
        # At most one fetch per second per worker process (plus one each in flight at the end), whatever the flood.
        print(f"{flood.statuses[400]} forged requests, {fetches} JWKS fetches in {elapsed:.1f} s by 2 workers")
        assert fetches <= 2 * (elapsed + 2), fetches
    finally:
        svc.stop()
        fake.stop()


def test_new_kid_while_gitlab_is_down_is_503_with_retry_after(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=2, jwks={"refetchIntervalSeconds": 1, "timeoutSeconds": 2})
    try:
        old_key_token = _staging(svc)
        # Until both workers have fetched GitLab's keys once (each keeps its own cache).
        eventually(lambda: _fresh_connection(svc, old_key_token).status_code == 200
                   and svc.metric("gitlab_sts_jwks_fetches_total", result="ok") >= 2, timeout=30, interval=0)
        fake.control(rotate=True, mode="down")  # a new key, and GitLab unreachable before the service saw it
        new_key_token = _staging(svc)
        for _ in range(4):
            answer = _fresh_connection(svc, new_key_token)
            # Not 400 "GitLab does not publish this key": the key may well exist; the job can retry.
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"
            assert 1 <= int(answer.headers["Retry-After"]) <= 2
            # Tokens of the known key still verify from the cache meanwhile.
            assert _fresh_connection(svc, old_key_token).status_code == 200
        fake.control(mode="ok")
        time.sleep(1.1)  # the Retry-After
        for _ in range(4):
            assert _fresh_connection(svc, new_key_token).status_code == 200
    finally:
        svc.stop()
        fake.stop()
