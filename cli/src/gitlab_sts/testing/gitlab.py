"""A local OIDC issuer standing in for a GitLab instance: discovery, JWKS and job ID tokens.

It signs tokens with GitLab's exact claim set and types (ids and booleans as strings, runner_id an
integer, nbf = iat - 5) so the exchange service can be exercised without a GitLab. It also has test
controls: rotate its CI signing key and simulate outages. Never expose it beyond loopback.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc.jwk import RSAKey

from gitlab_sts.core.jwtparse import b64url_encode

JWKS_PATH = "/oauth/discovery/keys"
TOKEN_PATH = "/-/test/id_token"  # noqa: S105 (a path, not a secret)
CONTROL_PATH = "/-/test/control"


def job_claims(issuer: str, aud: str | list[str], *, now: int | None = None, lifetime: int = 3600,
               **overrides: Any) -> dict[str, Any]:
    """Claims exactly as GitLab puts them in an `id_tokens:` token (overrides win; None removes)."""
    iat = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "namespace_id": "72", "namespace_path": "platform",
        "project_id": "4321", "project_path": "platform/payments",
        "user_id": "17", "user_login": "alice", "user_email": "alice@example.com",
        "user_access_level": "maintainer", "user_identities": [],
        "pipeline_id": "574", "pipeline_source": "push", "job_id": "302",
        "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
        "runner_id": 12, "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc", "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.com/platform/payments//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "jti": str(uuid.uuid4()), "iss": issuer, "iat": iat, "nbf": iat - 5, "exp": iat + lifetime,
        "aud": aud,
    }
    claims.update(overrides)
    claims["sub"] = overrides.get(
        "sub", f"project_path:{claims.get('project_path')}:ref_type:{claims.get('ref_type')}:ref:{claims.get('ref')}"
    )
    return {k: v for k, v in claims.items() if v is not None}


class FakeGitLab:
    """The issuer's keys and fault switches (shared by the HTTP handler threads)."""

    def __init__(self) -> None:
        self.issuer = ""
        self.lock = threading.Lock()
        # Like GitLab: one OIDC (OAuth app) key and one CI job key in the same JWKS.
        self.oidc_key = self._new_key()
        self.ci_key = self._new_key()
        self.retired: list[RSAKey] = []
        self.mode = "ok"  # ok | down | garbage | slow
        self.jwks_requests = 0

    @staticmethod
    def _new_key() -> RSAKey:
        key = RSAKey.generate_key(2048, private=True)
        data = key.as_dict(private=True)
        data.update(kid=key.thumbprint(), use="sig", alg="RS256")
        return RSAKey.import_key(data)

    def jwks(self) -> dict[str, Any]:
        """The public key set as GitLab serves it."""
        keys = [self.oidc_key, self.ci_key, *self.retired]
        return {"keys": [k.as_dict(private=False) for k in keys]}

    def rotate(self, keep_old: bool = True) -> str:
        """Replace the CI signing key (GitLab admins can do this); returns the new kid."""
        with self.lock:
            if keep_old:
                self.retired.append(self.ci_key)
            self.ci_key = self._new_key()
            return str(self.ci_key.kid)

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """Sign claims with the CI key, as GitLab signs job tokens."""
        return self.sign_raw(json.dumps(claims), header)

    def sign_raw(self, payload: str, header: dict[str, Any] | None = None) -> str:
        """Sign arbitrary payload text (tests of malformed-but-signed tokens)."""
        head: dict[str, Any] = {"kid": self.ci_key.kid, "typ": "JWT", "alg": "RS256"}
        head.update(header or {})
        # None removes a member (e.g. kid). Signed by hand so that tests can sign hostile headers
        # (crit, jku, ...) that a JOSE library would refuse to produce.
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = b64url_encode(json.dumps(head).encode()) + "." + b64url_encode(payload.encode())
        private = self.ci_key.private_key
        assert private is not None
        signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url_encode(signature)


def _handler(state: FakeGitLab) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fake-gitlab"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
            return

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _faulty(self) -> bool:
            mode = state.mode
            if mode == "down":
                self._send(503, {"message": "503 Service Unavailable"})
                return True
            if mode == "garbage":
                self._send(200, b"<html>not json")
                return True
            if mode == "slow":
                time.sleep(3)
            return False

        def do_GET(self) -> None:  # noqa: N802 (stdlib's name)
            if self.path == "/.well-known/openid-configuration":
                if self._faulty():
                    return
                self._send(200, {
                    "issuer": state.issuer, "jwks_uri": state.issuer + JWKS_PATH,
                    "authorization_endpoint": state.issuer + "/oauth/authorize",
                    "token_endpoint": state.issuer + "/oauth/token",
                    "response_types_supported": ["code"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                })
            elif self.path in (JWKS_PATH, "/-/jwks"):
                state.jwks_requests += 1
                if self._faulty():
                    return
                self._send(200, state.jwks(),
                           {"Cache-Control": "max-age=86400, public, must-revalidate, no-transform"})
            elif self.path == CONTROL_PATH:
                self._send(200, {"mode": state.mode, "jwks_requests": state.jwks_requests,
                                 "ci_kid": state.ci_key.kid})
            else:
                self._send(404, {"message": "404 Not Found"})

        def do_POST(self) -> None:  # noqa: N802 (stdlib's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == TOKEN_PATH and "raw_payload" in body:
                self._send(200, {"token": state.sign_raw(str(body["raw_payload"]), body.get("header"))})
            elif self.path == TOKEN_PATH:
                overrides = body.get("claims", {})
                claims = job_claims(state.issuer, body.get("aud", state.issuer),
                                    lifetime=int(body.get("lifetime", 3600)), **overrides)
                self._send(200, {"token": state.sign(claims, body.get("header")), "claims": claims})
            elif self.path == CONTROL_PATH:
                if "mode" in body:
                    state.mode = str(body["mode"])
                kid = state.rotate(keep_old=bool(body.get("keep_old", True))) if body.get("rotate") else None
                self._send(200, {"mode": state.mode, "ci_kid": kid or state.ci_key.kid})
            else:
                self._send(404, {"message": "404 Not Found"})

    return Handler


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, FakeGitLab]:
    """Start the fake GitLab in a background thread; returns the server and its state."""
    state = FakeGitLab()
    server = ThreadingHTTPServer((host, port), _handler(state))
    server.daemon_threads = True
    state.issuer = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="fake-gitlab", daemon=True).start()
    return server, state


def main(argv: list[str] | None = None) -> None:
    """Run the fake GitLab in the foreground; prints its issuer URL on the first line."""
    parser = argparse.ArgumentParser(prog="gitlab-sts fake-gitlab", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server, state = serve(args.host, args.port)
    print(state.issuer, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
