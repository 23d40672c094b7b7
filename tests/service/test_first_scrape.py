"""Gauges of shared state are right on the first scrape, whichever worker answers; /readyz names its worker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import requests

from tests.service.harness import FakeGitLabProcess, one_key_ring, start_service


def test_gauges_are_set_by_every_worker_at_load(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    ring = one_key_ring()
    svc = start_service(tmp_path, fake_gitlab, ring=ring, workers=3)
    try:
        # The very first scrape: no worker has served /metrics before. A worker that set its gauges only when
        # serving /metrics left 0.0 in its file, and the min over workers made the key look about to retire.
        remaining = svc.metric("gitlab_sts_signing_key_remaining_seconds")
        expected = (ring.keys[0].retire_at - datetime.now(UTC)).total_seconds()
        assert expected - 120 < remaining <= expected + 5, (remaining, expected)
        age = svc.metric("gitlab_sts_signing_key_age_seconds")
        assert 3600 - 5 <= age < 3600 + 120
        assert svc.metric("gitlab_sts_bindings") == 4
    finally:
        svc.stop()


def test_readyz_names_the_worker_it_describes(service: object) -> None:
    url = service.url  # type: ignore[attr-defined]
    pids = set()
    for _ in range(20):
        detail = requests.get(url + "/readyz", timeout=10, headers={"Connection": "close"}).json()
        pids.add(detail["worker"]["pid"])
    assert all(isinstance(p, int) and p > 1 for p in pids)
