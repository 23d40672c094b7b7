"""The hostile token corpus (corpus.py): every entry is refused, with a reason, and nothing is minted."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitlab_sts.service import metrics
from tests.fuzz.appkit import App, assert_refused, make_app
from tests.hostile.corpus import NAMES, build


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The exchange service in-process, with a pinned GitLab key set."""
    built = make_app(tmp_path_factory.mktemp("hostile"))
    logging.getLogger("gitlab_sts").setLevel(logging.CRITICAL)
    yield built
    logging.getLogger("gitlab_sts").setLevel(logging.INFO)


@pytest.fixture(scope="module")
def corpus(app: App) -> dict[str, str]:
    """The tokens, signed by this app's GitLab stand-in or by an attacker's key."""
    return build(app.gitlab)


def test_corpus_is_complete(corpus: dict[str, str]) -> None:
    assert sorted(corpus) == sorted(NAMES)


def test_the_control_token_is_accepted(app: App) -> None:
    # Without this, every refusal below could be a broken setup rather than a working check.
    assert app.exchange(app.staging()).status_code == 200


@pytest.mark.parametrize("name", NAMES)
def test_hostile_token_is_refused(app: App, corpus: dict[str, str], name: str) -> None:
    issued_before = metrics.EXCHANGES.labels(endpoint="/v1/token", result="issued", reason="ok")._value.get()
    for path in ("/v1/token", "/v1/explain"):
        body = assert_refused(app.exchange(corpus[name], path), (400, 413))
        assert body["error"] == "invalid_request"
        # The answer never echoes the token (or a large part of it).
        assert corpus[name][:40] not in str(body) or len(corpus[name]) < 40
    issued_after = metrics.EXCHANGES.labels(endpoint="/v1/token", result="issued", reason="ok")._value.get()
    assert issued_after == issued_before


def test_refusals_are_counted_by_reason(app: App, corpus: dict[str, str]) -> None:
    before = metrics.EXCHANGES.labels(endpoint="/v1/token", result="denied", reason="bad_algorithm")._value.get()
    assert_refused(app.exchange(corpus["alg-hs256-keyed-with-public-pem"]))
    after = metrics.EXCHANGES.labels(endpoint="/v1/token", result="denied", reason="bad_algorithm")._value.get()
    assert after == before + 1


def test_corpus_tokens_are_refused_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged and untrusted tokens (an unknown iss, a jku or x5u URL) never make the service connect anywhere."""
    built = make_app(tmp_path)
    connections: list[object] = []

    def no_network(address: object, *args: object, **kwargs: object) -> socket.socket:
        connections.append(address)
        raise OSError("the hostile corpus must not cause a connection")
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name, token in build(built.gitlab).items():
        assert built.exchange(token).status_code in (400, 413), name
    assert connections == []
