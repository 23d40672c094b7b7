"""A stand-in exchange service on loopback for the job client tests."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2dpdGxhYi5leGFtcGxlLmNvbSJ9.c2lnbmF0dXJlLXNlY3JldA"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"  # noqa: S105 (test data)
MINTED = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06Z2l0bGFiYXdzYmluZGluZyJ9.bWludGVk"
DEFAULT_ROLE = "arn:aws:iam::111122223333:role/default-role"

Reply = tuple[int, Any, dict[str, str]]  # status, JSON body (or raw bytes), headers


def credentials(role: str | None = None) -> dict[str, Any]:
    """A /v1/credentials answer."""
    suffix = (role or DEFAULT_ROLE).rsplit("/", 1)[-1].upper().replace("-", "")[:8].ljust(8, "X")
    return {"Version": 1, "AccessKeyId": "ASIAEXAMPLE" + suffix, "SecretAccessKey": SECRET,
            "SessionToken": SESSION_TOKEN, "Expiration": "2099-01-01T00:00:00Z"}


@dataclass
class StandIn:
    """Answers /v1/credentials and /v1/token; `script` queues replies per path; `requests` records forms."""

    script: dict[str, list[Reply | Callable[[dict[str, str]], Reply]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    url: str = ""
    fallback: Callable[[str, dict[str, str]], Reply] | None = None

    def default(self, path: str, form: dict[str, str]) -> Reply:
        if path == "/v1/credentials":
            return 200, credentials(form.get("resource")), {}
        if path == "/v1/token":
            role = form.get("resource", DEFAULT_ROLE)
            return 200, {"access_token": MINTED + role.rsplit("/", 1)[-1], "role_arn": role,
                         "issued_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_type": "N_A",
                         "expires_in": 900, "binding": "team-a/deploy",
                         "role_session_name": "gitlab-1234-5678"}, {}
        return 404, {"error": "not_found"}, {}

    def reply(self, path: str, form: dict[str, str]) -> Reply:
        queue = self.script.get(path)
        if queue:
            item = queue.pop(0)
            return item(form) if callable(item) else item
        return (self.fallback or self.default)(path, form)


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            state.requests.append((self.path, form))
            if state.delay:
                time.sleep(state.delay)
            status, body, headers = state.reply(self.path, form)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            with suppress(BrokenPipeError, ConnectionResetError):  # the client timed out on purpose
                self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


@contextmanager
def serve(state: StandIn, tls: ssl.SSLContext | None = None) -> Iterator[StandIn]:
    """Serve a stand-in on 127.0.0.1 (https when given a server TLS context) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """A stand-in service; tests queue replies in `stand_in.script[path]`."""
    with serve(StandIn()) as state:
        yield state


@pytest.fixture(autouse=True)
def job_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A job's environment: the ID token variable set, no AWS or proxy settings from the developer."""
    for name in ("GITLAB_STS_URL", "GITLAB_STS_CA_BUNDLE", "GITLAB_STS_TOKEN_DIR", "AWS_PROFILE", "AWS_CONFIG_FILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
                 "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path_factory.getbasetemp() / "no-aws-credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GITLAB_STS_ID_TOKEN", ID_TOKEN)
