"""One in-process app per module for the property tests (hypothesis reuses it across examples)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fuzz.appkit import App, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The exchange service with the example bindings, in-process."""
    built = make_app(tmp_path_factory.mktemp("fuzz-app"))
    # Thousands of refusals would each write an audit line; keep the test output quiet.
    logger = logging.getLogger("gitlab_sts")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield built
    logger.setLevel(level)
