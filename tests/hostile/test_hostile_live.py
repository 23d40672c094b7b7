"""The hostile token corpus against the real gunicorn server: same refusals over HTTP, no 500, no token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gitlab_sts.testing.gitlab import FakeGitLab
from tests.hostile.corpus import GITLAB, NAMES, STS, build
from tests.service.harness import FakeGitLabProcess, Service, start_service


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    """gunicorn trusting the corpus's GitLab stand-in through a pinned key set."""
    signer = FakeGitLab()
    signer.issuer = GITLAB
    unused = FakeGitLabProcess()  # start_service wants one; the pinned settings below replace it
    svc = start_service(Path(tmp_path_factory.mktemp("hostile-live")), unused,
                        gitlab=[{"issuer": GITLAB, "audiences": [STS], "jwks": signer.jwks()}])
    yield svc, build(signer)
    svc.stop()
    unused.stop()


def test_the_whole_corpus_is_refused_over_http(live: tuple[Service, dict[str, str]]) -> None:
    svc, corpus = live
    assert set(corpus) == set(NAMES)
    for name, token in corpus.items():
        answer = svc.exchange(token)
        # As in-process (test_hostile_tokens): refused at verification, never later by a binding rule (403).
        assert answer.status_code in (400, 413), (name, answer.status_code, answer.text[:300])
        body = answer.json()
        assert body["error"] == "invalid_request", (name, body)
        assert answer.headers["Cache-Control"] == "no-store", name
        assert "access_token" not in body, name
        if len(token) > 40:
            assert token not in answer.text, name
    # The server stayed healthy and never answered 500 along the way.
    assert requests.get(svc.url + "/healthz", timeout=10).status_code == 200
    assert '"reason":"internal_error"' not in svc.log()
