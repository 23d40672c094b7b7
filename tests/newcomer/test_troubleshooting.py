"""docs/troubleshooting.md covers every reason, error, STS code and client exit code the code can emit."""

from __future__ import annotations

import re
from pathlib import Path

from gitlab_sts import login
from gitlab_sts.core import errors
from gitlab_sts.service import stsclient

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "troubleshooting.md").read_text()
SOURCES = [p for root in ("core/src", "service/src", "cli/src") for p in (ROOT / root).rglob("*.py")
           if "testing" not in p.parts]


def _documented(name: str) -> bool:
    return f"`{name}`" in DOC


def _emitted(pattern: str) -> set[str]:
    found: set[str] = set()
    for path in SOURCES:
        found |= set(re.findall(pattern, path.read_text()))
    return found


def test_the_collector_finds_the_reasons_it_should() -> None:
    # A guard against a pattern that silently matches nothing.
    reasons = _emitted(r'reason="([a-z0-9_]+)"')
    assert {"no_binding", "rule_failed", "bad_audience", "expired", "sts_refused", "jwks_unavailable"} <= reasons
    assert len(reasons) >= 25


def test_every_reason_in_the_code_is_documented() -> None:
    reasons = _emitted(r'reason="([a-z0-9_]+)"') | {errors.ExchangeError.reason}
    missing = sorted(r for r in reasons if not _documented(r))
    assert not missing, f"reasons missing from docs/troubleshooting.md: {missing}"
    # f"http_{status}" (werkzeug's refusals): the pattern and the two that happen are named.
    assert _emitted(r'reason=f"(http_)\{status\}"') == {"http_"}
    assert _documented("http_<status>")
    for name in ("http_404", "http_405"):
        assert _documented(name)


def test_every_rfc6749_error_is_documented() -> None:
    codes = _emitted(r'error="([a-z_]+)"') | {"invalid_request"}
    assert {"invalid_target", "temporarily_unavailable", "server_error", "unsupported_grant_type"} <= codes
    assert not sorted(c for c in codes if not _documented(c))


def test_every_sts_code_the_service_treats_specially_is_documented() -> None:
    codes = set(stsclient.RETRYABLE_CODES) | set(stsclient._REQUEST_CODES) | {"AccessDenied", "InvalidIdentityToken",
                                                                                "ExpiredTokenException"}
    assert not sorted(c for c in codes if not _documented(c))


def test_every_exit_code_of_the_job_client_is_documented() -> None:
    exits = {value for name, value in vars(login).items() if name.startswith("EXIT_") and isinstance(value, int)}
    assert exits >= {2, 3, 4, 5, 6, 7, 8, 9}
    for code in exits | {0}:
        assert re.search(rf"^\| `{code}` \|", DOC, re.MULTILINE), f"exit code {code} is not in the table"


def test_the_start_up_exit_code_is_the_documented_one() -> None:
    from gitlab_sts.service.preflight import EXIT_CONFIG

    assert f"exit code `{EXIT_CONFIG}`" in DOC
