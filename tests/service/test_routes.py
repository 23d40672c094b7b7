"""The HTTP layer in-process: refusals from werkzeug and from the form keep the RFC 6749 shape and are counted."""

from __future__ import annotations

from pathlib import Path

from gitlab_sts.service import metrics
from tests.fuzz.appkit import App, assert_refused, make_app


def _count(endpoint: str, reason: str) -> float:
    value: float = metrics.EXCHANGES.labels(endpoint=endpoint, result="denied", reason=reason)._value.get()
    return value


def _series(endpoint: str) -> bool:
    return any(sample.labels.get("endpoint") == endpoint
               for family in metrics.EXCHANGES.collect() for sample in family.samples)


def test_wrong_method_on_an_exchange_path_is_counted_and_names_post(tmp_path: Path) -> None:
    app: App = make_app(tmp_path)
    before = _count("/v1/credentials", "http_405")
    answer = app.client.get("/v1/credentials")
    assert_refused(answer, (405,))
    assert "POST" in answer.headers["Allow"].split(", ")
    assert _count("/v1/credentials", "http_405") == before + 1


def test_an_unknown_path_is_json_but_no_metric_series(tmp_path: Path) -> None:
    # The path is the caller's choice: counting it would let any client create metric series without bound.
    app = make_app(tmp_path)
    body = assert_refused(app.client.post("/v1/token-nope-8e1f"), (404,))
    assert body["error"] == "invalid_request"
    assert not _series("/v1/token-nope-8e1f")


def test_form_refusals_are_counted_per_endpoint(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    before = _count("/v1/explain", "bad_form"), _count("/v1/explain", "too_large")
    assert_refused(app.post('{"subject_token": "x"}', "/v1/explain", content_type="application/json"), (400,))
    assert_refused(app.post(b"x" * 200_000, "/v1/explain"), (413,))
    assert (_count("/v1/explain", "bad_form"), _count("/v1/explain", "too_large")) == (before[0] + 1, before[1] + 1)
