"""Fixtures: one fake GitLab process and one gunicorn service shared per module where safe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import FakeGitLabProcess, Service, start_service


@pytest.fixture(scope="session")
def fake_gitlab() -> Iterator[FakeGitLabProcess]:
    """A fake GitLab issuer process for the whole session."""
    fake = FakeGitLabProcess()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def service(fake_gitlab: FakeGitLabProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with the example bindings, shared by a module's read-only tests."""
    svc = start_service(Path(tmp_path_factory.mktemp("svc")), fake_gitlab)
    yield svc
    svc.stop()


@pytest.fixture
def fresh_service(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> Iterator[list[Service]]:
    """Start services with custom config inside a test; all are stopped afterwards."""
    started: list[Service] = []
    yield started
    for svc in started:
        svc.stop()
