"""A fake GitLab process shared by the fault tests that do not change its mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.harness import FakeGitLabProcess


@pytest.fixture(scope="module")
def fake_gitlab() -> Iterator[FakeGitLabProcess]:
    """The stand-in GitLab issuer process."""
    fake = FakeGitLabProcess()
    yield fake
    fake.stop()
