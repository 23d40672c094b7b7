"""GitLab key fetching: caching, rotation (new kid), outages with and without a cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from tests.service.harness import FakeGitLabProcess, Service, start_service


def _fetches(service: Service) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in requests.get(service.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("gitlab_sts_jwks_fetches_total{"):
            labels, value = line.rsplit(" ", 1)
            result = labels.split('result="')[1].split('"')[0]
            out[result] = out.get(result, 0.0) + float(value)
    return out


def _staging(service: Service) -> str:
    return service.job_token(environment="staging", environment_protected="false")


def test_steady_state_makes_no_upstream_fetch_per_request(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab, workers=1)
    try:
        token = _staging(svc)
        for _ in range(30):
            assert svc.exchange(token).status_code == 200
        assert _fetches(svc) == {"ok": 1.0}
    finally:
        svc.stop()


def test_new_gitlab_key_is_fetched_once_then_cached(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=1, jwks={"refetchIntervalSeconds": 0})
    try:
        assert svc.exchange(_staging(svc)).status_code == 200
        fake.control(rotate=True)  # GitLab's admin rotated the CI signing key: a new kid appears
        token = _staging(svc)
        for _ in range(5):
            assert svc.exchange(token).status_code == 200
        assert _fetches(svc) == {"ok": 2.0}
    finally:
        svc.stop()
        fake.stop()


def test_unknown_kid_refetch_is_rate_limited(tmp_path: Path) -> None:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=1, jwks={"refetchIntervalSeconds": 1})
    try:
        assert svc.exchange(_staging(svc)).status_code == 200
        attacker = RSAKey.generate_key(2048, private=True)
        from gitlab_sts.testing.gitlab import job_claims

        started = time.monotonic()
        for i in range(4):
            forged = jwt.encode({"alg": "RS256", "kid": f"random-{i}"}, job_claims(fake.issuer, svc.url), attacker)
            answer = svc.exchange(forged)
            assert answer.status_code == 400 and "does not publish" in answer.json()["error_description"]
        # Each forged kid waited for a fetch that started after it arrived, at most one a second: a flood of
        # random kids does not turn into a flood of requests to GitLab.
        elapsed = time.monotonic() - started
        assert _fetches(svc)["ok"] <= 2 + elapsed
        assert elapsed >= 2.5  # 4 fetches 1 s apart (the first may follow the start-up fetch by up to 1 s)
    finally:
        svc.stop()
        fake.stop()


def test_outage_without_cache_is_503(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    fake.control(mode="down")
    svc = start_service(tmp_path, fake, workers=1, jwks={"refetchIntervalSeconds": 1})
    try:
        token = _staging(svc)
        answer = svc.exchange(token)
        assert answer.status_code == 503
        body: dict[str, Any] = answer.json()
        assert body["error"] == "temporarily_unavailable"
        # Within the retry interval GitLab is not asked again: still 503 at once.
        assert svc.exchange(token).status_code == 503
        assert _fetches(svc) == {"error": 1.0}
        fake.control(mode="ok")
        time.sleep(1.1)
        assert svc.exchange(token).status_code == 200
    finally:
        svc.stop()
        fake.stop()


def test_garbage_jwks_is_an_outage_not_a_crash(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    fake.control(mode="garbage")
    svc = start_service(tmp_path, fake, workers=1)
    try:
        answer = svc.exchange(_staging(svc))
        assert answer.status_code == 503
        ready = requests.get(svc.url + "/readyz", timeout=10).json()
        assert "did not answer JSON" in ready["gitlab"][fake.issuer]["last_error"]
    finally:
        svc.stop()
        fake.stop()


def test_stale_keys_serve_during_an_outage_within_bounds(tmp_path: Path) -> None:
    fake = FakeGitLabProcess()
    svc = start_service(tmp_path, fake, workers=1,
                        jwks={"minCacheSeconds": 0, "maxCacheSeconds": 1, "maxStaleSeconds": 3,
                              "refetchIntervalSeconds": 0})
    try:
        token = _staging(svc)
        assert svc.exchange(token).status_code == 200
        fake.control(mode="down")
        time.sleep(1.2)  # past the 1 s cache lifetime: now stale
        assert svc.exchange(token).status_code == 200
        time.sleep(3.5)  # past the stale bound
        answer = svc.exchange(token)
        assert answer.status_code == 503
        assert answer.json()["error"] == "temporarily_unavailable"
        fake.control(mode="ok")
        assert svc.exchange(token).status_code == 200
    finally:
        svc.stop()
        fake.stop()
