"""The service's STS client (service/stsclient.py) against the local STS: answers, error mapping, retries."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gitlab_sts.core.errors import InvalidRequest, InvalidTarget, TemporarilyUnavailable
from gitlab_sts.service.stsclient import StsClient, StsError
from gitlab_sts.testing.sts import RunningSts
from tests.sts.conftest import ACCOUNT, SUB, Issuer

BASIC = f"arn:aws:iam::{ACCOUNT}:role/basic"


def client(url: str, sleeps: list[float] | None = None, attempts: int = 3) -> StsClient:
    return StsClient(url, timeout=2, attempts=attempts, backoff=0.01,
                     sleep=(sleeps.append if sleeps is not None else lambda _: None))


def test_returns_credential_process_json(local_sts: RunningSts, issuer: Issuer) -> None:
    creds = client(local_sts.url).assume_role_with_web_identity(BASIC, issuer.sign(), "gitlab-1-2", 900)
    assert creds.assumed_role_arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic/gitlab-1-2"
    assert creds.subject == SUB and creds.source_identity is None
    answer = creds.credential_process()
    assert set(answer) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert answer["Version"] == 1 and answer["AccessKeyId"].startswith("ASIA")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer["Expiration"])


@pytest.mark.parametrize(("role", "claims", "duration", "code", "mapped"), [
    ("basic", {"sub": "system:gitlabawsbinding:team-b:x"}, None, "AccessDenied", InvalidTarget),
    ("basic", {"aud": "nope"}, None, "InvalidIdentityToken", InvalidTarget),
    ("basic", {"exp": 1}, None, "ExpiredTokenException", InvalidTarget),
    ("basic", {}, 7200, "ValidationError", InvalidRequest),
])
def test_refusals_are_not_retried_and_map_to_exchange_errors(
        local_sts: RunningSts, issuer: Issuer, role: str, claims: dict[str, Any], duration: int | None,
        code: str, mapped: type[Exception]) -> None:
    sleeps: list[float] = []
    with pytest.raises(StsError) as info:
        client(local_sts.url, sleeps).assume_role_with_web_identity(
            f"arn:aws:iam::{ACCOUNT}:role/{role}", issuer.sign(issuer.claims(**claims)), "s1", duration)
    assert (info.value.code, info.value.retryable, sleeps) == (code, False, [])
    error = info.value.exchange_error(BASIC)
    assert isinstance(error, mapped)
    assert code in error.description and error.body()["sts_error"] == code


def test_idp_communication_error_is_retried_then_temporarily_unavailable(
        local_sts: RunningSts, signing_keys: dict[str, Any]) -> None:
    # A provider is registered for https://elsewhere.example.com but unreachable: the local STS cannot
    # fetch its keys. Use a loopback stand-in for it instead, on a port nobody listens on.
    from gitlab_sts.testing.sts import start_local_sts
    from gitlab_sts.testing.sts_config import parse_config
    from tests.sts.conftest import sts_config_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ghost = Issuer(keys=signing_keys)
    ghost.url = f"http://127.0.0.1:{port}"
    try:
        with start_local_sts(parse_config(sts_config_for(ghost)), fetch_timeout=1) as running:
            sleeps: list[float] = []
            with pytest.raises(StsError) as info:
                client(running.url, sleeps).assume_role_with_web_identity(BASIC, ghost.sign(), "s1")
    finally:
        ghost.close()
    assert info.value.code == "IDPCommunicationError" and info.value.retryable
    assert len(sleeps) == 2  # three attempts
    assert isinstance(info.value.exchange_error(BASIC), TemporarilyUnavailable)


@pytest.fixture
def throttling() -> Iterator[tuple[str, list[int]]]:
    """An endpoint that throttles every call, counting them."""
    calls: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            calls.append(1)
            body = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
                    b"<Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
                    b"<RequestId>r1</RequestId></ErrorResponse>")
            self.send_response(400)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", calls
    server.shutdown()
    server.server_close()


def test_throttling_is_retried(throttling: tuple[str, list[int]], issuer: Issuer) -> None:
    url, calls = throttling
    with pytest.raises(StsError) as info:
        client(url, attempts=4).assume_role_with_web_identity(BASIC, issuer.sign(), "s1")
    assert (info.value.code, len(calls)) == ("Throttling", 4)


def test_unreachable_endpoint_is_retried_then_unavailable(issuer: Issuer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(StsError) as info:
        client(f"http://127.0.0.1:{port}", sleeps).assume_role_with_web_identity(BASIC, issuer.sign(), "s1")
    assert info.value.retryable and info.value.status is None and len(sleeps) == 2
    assert isinstance(info.value.exchange_error(BASIC), TemporarilyUnavailable)
