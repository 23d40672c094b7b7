"""A local STS that checks web identity tokens the way AWS documents it. NOT AWS.

It speaks the STS query API (``Action=AssumeRoleWithWebIdentity``, ``Version=2011-06-15``, form
POST or GET query, XML answers and XML errors with the HTTP status of the botocore model), so real
boto3 and the AWS CLI talk to it unchanged. The accounts it emulates (IAM OIDC providers and roles
with trust policies) come from a small YAML file, see :mod:`gitlab_sts.testing.sts_config`.

The credentials it returns are fake: they have AWS's shape (``ASIA...`` key ids, ISO-8601
expiration) but the session token starts with ``NOT-AWS-LOCAL-STS`` and every answer carries the
header ``X-Gitlab-Sts-Local: not AWS``. ``GetCallerIdentity`` answers for sessions it issued, by
access key id, without checking the SigV4 signature.

Run it as ``gitlab-sts sts-local --config sts.yaml --port 8090``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree as ET

from gitlab_sts.testing.sts_config import ROLE_ARN, StsConfig, load_config
from gitlab_sts.testing.sts_token import KeyFetcher, StsFault, ValidToken, validate_token

log = logging.getLogger("gitlab_sts.sts_local")

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
VERSION = "2011-06-15"
NOT_AWS_HEADER = ("X-Gitlab-Sts-Local", "not AWS")
SESSION_TOKEN_PREFIX = "NOT-AWS-LOCAL-STS"  # noqa: S105 (a marker, not a secret)
ACCESS_DENIED = "Not authorized to perform sts:AssumeRoleWithWebIdentity"
MAX_BODY = 256 * 1024
_SESSION_NAME = re.compile(r"^[\w+=,.@-]*$", re.ASCII)
_POLICY_CHARS = re.compile(r"^[\u0009\u000A\u000D\u0020-\u00FF]+$")
_KEY_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True)
class Session:
    """Credentials the local STS issued, remembered for GetCallerIdentity."""

    access_key_id: str
    account: str
    arn: str
    assumed_role_id: str
    expires_at: float


def _validation(errors: list[str]) -> StsFault:
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    return StsFault("ValidationError", f"{count} validation {noun} detected: " + "; ".join(errors))


def _length_error(field: str, value: str, low: int, high: int, *, echo: bool = True) -> str | None:
    shown = f"'{value}'" if echo else "'***'"
    prefix = f"Value {shown} at '{field}' failed to satisfy constraint: Member must have length"
    if len(value) < low:
        return f"{prefix} greater than or equal to {low}"
    if len(value) > high:
        return f"{prefix} less than or equal to {high}"
    return None


def _role_id(role_arn: str) -> str:
    # Stable per role, like a real role's unique id (AROA + 17 characters).
    digest = hashlib.sha256(role_arn.encode()).digest()
    return "AROA" + base64.b32encode(digest).decode()[:17]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _packed_percent(tags: dict[str, str], transitive: tuple[str, ...], policy: str | None) -> int:
    # AWS packs policies and tags into an undocumented binary form; compressed JSON approximates it.
    payload = json.dumps([sorted(tags.items()), list(transitive), policy or ""], separators=(",", ":"))
    return math.ceil(100 * len(zlib.compress(payload.encode())) / 2048)


class LocalSts:
    """The STS logic, independent of HTTP: parameters in, (status, XML) out."""

    def __init__(self, config: StsConfig, *, clock: Callable[[], float] = time.time,
                 fetch_timeout: float = 5.0) -> None:
        self.config = config
        self._clock = clock
        # The JWKS cache ages on the same clock as token times, as AWS's cache would (tests move both).
        self.fetcher = KeyFetcher(cache_seconds=config.jwks_cache_seconds, ca_bundle=config.ca_bundle,
                                  timeout=fetch_timeout, clock=clock)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def handle(self, params: dict[str, str], *, authorization: str = "") -> tuple[int, bytes, str | None]:
        """Answer one query API call: (HTTP status, XML body, detail for the debugging header)."""
        request_id = str(uuid.uuid4())
        action = params.get("Action", "")
        try:
            if params.get("Version") != VERSION:
                raise StsFault("InvalidAction", f"Could not find operation {action} for version "
                               f"{params.get('Version', 'NULL')}")
            if action == "AssumeRoleWithWebIdentity":
                body = self._assume(params, request_id)
            elif action == "GetCallerIdentity":
                body = self._caller_identity(authorization or params.get("X-Amz-Credential", ""), request_id)
            else:
                raise StsFault("InvalidAction", f"Could not find operation {action} for version {VERSION}")
        except StsFault as fault:
            log.info("request %s %s refused: %s (%s)", request_id, action, fault.code, fault.detail)
            return fault.status, _error_xml(fault, request_id), fault.detail
        return 200, body, None

    def _assume(self, params: dict[str, str], request_id: str) -> bytes:
        role_arn, session_name, duration, policy = self._check_parameters(params)
        token = params["WebIdentityToken"]
        match = ROLE_ARN.match(role_arn)
        if match is None:
            raise StsFault("ValidationError", "Request ARN is invalid")
        account = match.group(1)
        now = self._clock()
        valid = validate_token(token, account=account, find_provider=self.config.provider,
                               fetcher=self.fetcher, now=now)
        role = self.config.role(role_arn)
        if role is None:
            raise StsFault("AccessDenied", ACCESS_DENIED, 403, detail=f"no role {role_arn}")
        actions = ["sts:AssumeRoleWithWebIdentity"]
        if valid.tags or valid.transitive_tag_keys:
            actions.append("sts:TagSession")
        if valid.source_identity is not None:
            actions.append("sts:SetSourceIdentity")
        why = role.trust_policy.decide(valid.provider.arn, actions, _context(valid, session_name))
        if why is not None:
            raise StsFault("AccessDenied", ACCESS_DENIED, 403, detail=why)
        if duration > role.max_session_duration:
            raise StsFault("ValidationError",
                           "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
        packed = None
        if valid.tags or policy is not None:
            packed = _packed_percent(valid.tags, valid.transitive_tag_keys, policy)
            if packed > 100:
                raise StsFault("PackedPolicyTooLarge", f"Packed size of session policy and tags is {packed}% "
                               "of the limit")
        access_key_id = "ASIA" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16))
        session = Session(access_key_id=access_key_id, account=account,
                          arn=f"arn:aws:sts::{account}:assumed-role/{role.name}/{session_name}",
                          assumed_role_id=f"{_role_id(role.arn)}:{session_name}", expires_at=now + duration)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[access_key_id] = session
        log.info("request %s issued %s to sub=%s for %s (token sha256 %s)", request_id, session.arn,
                 valid.subject, role.arn, hashlib.sha256(token.encode()).hexdigest())
        return _success_xml(valid, session, packed, request_id)

    def _check_parameters(self, params: dict[str, str]) -> tuple[str, str, int, str | None]:
        errors: list[str] = []
        for name, field in (("RoleArn", "roleArn"), ("RoleSessionName", "roleSessionName"),
                            ("WebIdentityToken", "webIdentityToken")):
            if name not in params:
                errors.append(f"Value null at '{field}' failed to satisfy constraint: Member must not be null")
        if errors:
            raise _validation(errors)
        role_arn, session_name, token = params["RoleArn"], params["RoleSessionName"], params["WebIdentityToken"]
        checks = [_length_error("roleArn", role_arn, 20, 2048),
                  _length_error("roleSessionName", session_name, 2, 64),
                  _length_error("webIdentityToken", token, 4, 20000, echo=False)]
        errors = [e for e in checks if e]
        if not _SESSION_NAME.match(session_name):
            errors.append(f"Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: "
                          "Member must satisfy regular expression pattern: [\\w+=,.@-]*")
        duration = 3600
        if "DurationSeconds" in params:
            raw = params["DurationSeconds"]
            if not re.fullmatch(r"-?\d{1,9}", raw):
                errors.append(f"Value '{raw}' at 'durationSeconds' failed to satisfy constraint: "
                              "Member must be an integer")
            else:
                duration = int(raw)
                if duration < 900:
                    errors.append(f"Value '{raw}' at 'durationSeconds' failed to satisfy constraint: "
                                  "Member must have value greater than or equal to 900")
                elif duration > 43200:
                    errors.append(f"Value '{raw}' at 'durationSeconds' failed to satisfy constraint: "
                                  "Member must have value less than or equal to 43200")
        policy = params.get("Policy")
        if policy is not None:
            problem = _length_error("policy", policy, 1, 2048, echo=False)
            if problem:
                errors.append(problem)
            elif not _POLICY_CHARS.match(policy):
                errors.append("Value at 'policy' failed to satisfy constraint: Member must satisfy regular "
                              "expression pattern: [\\u0009\\u000A\\u000D\\u0020-\\u00FF]+")
        arns = [k for k in params if re.fullmatch(r"PolicyArns\.member\.\d+\.arn", k)]
        if len(arns) > 10:
            errors.append("Value at 'policyArns' failed to satisfy constraint: Member must have length less "
                          "than or equal to 10")
        if errors:
            raise _validation(errors)
        if policy is not None:
            try:
                json.loads(policy)
            except ValueError:
                raise StsFault("MalformedPolicyDocument", "The policy is not in the valid JSON format.") from None
        return role_arn, session_name, duration, policy

    def _caller_identity(self, credential: str, request_id: str) -> bytes:
        match = re.search(r"(ASIA[A-Z2-7]{16})/", credential)
        with self._lock:
            session = self._sessions.get(match.group(1)) if match else None
        if session is None or session.expires_at <= self._clock():
            raise StsFault("InvalidClientTokenId", "The security token included in the request is invalid.", 403)
        root = ET.Element("GetCallerIdentityResponse", xmlns=NAMESPACE)
        result = ET.SubElement(root, "GetCallerIdentityResult")
        _add(result, "Arn", session.arn)
        _add(result, "UserId", session.assumed_role_id)
        _add(result, "Account", session.account)
        _add(ET.SubElement(root, "ResponseMetadata"), "RequestId", request_id)
        return ET.tostring(root, encoding="unicode").encode()


def _context(valid: ValidToken, session_name: str) -> dict[str, str]:
    # Condition keys are case-insensitive in IAM: store them lower-cased.
    prefix = valid.provider.host_path
    context = {f"{prefix}:aud": valid.audience, f"{prefix}:sub": valid.subject,
               "sts:rolesessionname": session_name}
    for key, value in valid.tags.items():
        context[f"aws:requesttag/{key}"] = value
    if valid.source_identity is not None:
        context["sts:sourceidentity"] = valid.source_identity
    return {k.lower(): v for k, v in context.items()}


def _add(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _success_xml(valid: ValidToken, session: Session, packed: int | None, request_id: str) -> bytes:
    root = ET.Element("AssumeRoleWithWebIdentityResponse", xmlns=NAMESPACE)
    result = ET.SubElement(root, "AssumeRoleWithWebIdentityResult")
    _add(result, "SubjectFromWebIdentityToken", valid.subject)
    _add(result, "Audience", valid.audience)
    user = ET.SubElement(result, "AssumedRoleUser")
    _add(user, "Arn", session.arn)
    _add(user, "AssumedRoleId", session.assumed_role_id)
    credentials = ET.SubElement(result, "Credentials")
    _add(credentials, "AccessKeyId", session.access_key_id)
    _add(credentials, "SecretAccessKey", base64.b64encode(secrets.token_bytes(30)).decode())
    _add(credentials, "SessionToken", f"{SESSION_TOKEN_PREFIX}/{secrets.token_urlsafe(96)}")
    _add(credentials, "Expiration", _iso(session.expires_at))
    if valid.source_identity is not None:
        _add(result, "SourceIdentity", valid.source_identity)
    _add(result, "Provider", valid.provider.arn)
    if packed is not None:
        _add(result, "PackedPolicySize", str(packed))
    _add(ET.SubElement(root, "ResponseMetadata"), "RequestId", request_id)
    return ET.tostring(root, encoding="unicode").encode()


def _error_xml(fault: StsFault, request_id: str) -> bytes:
    root = ET.Element("ErrorResponse", xmlns=NAMESPACE)
    error = ET.SubElement(root, "Error")
    _add(error, "Type", "Sender" if fault.status < 500 else "Receiver")
    _add(error, "Code", fault.code)
    _add(error, "Message", fault.message)
    _add(root, "RequestId", request_id)
    return ET.tostring(root, encoding="unicode").encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, b"", None)
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        self._dispatch(body)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(self.path.partition("?")[2])

    def _dispatch(self, query: str) -> None:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        status, body, detail = self.server.sts.handle(params, authorization=self.headers.get("Authorization", ""))
        self._answer(status, body, detail)

    def _answer(self, status: int, body: bytes, detail: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(*NOT_AWS_HEADER)
        if detail:
            # Why the request failed, for people debugging locally; real STS never says.
            self.send_header("X-Gitlab-Sts-Local-Detail", detail.encode("ascii", "replace").decode()[:500])
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sts: LocalSts) -> None:
        super().__init__(address, _Handler)
        self.sts = sts


class RunningSts:
    """A local STS serving on a background thread; close() stops it."""

    def __init__(self, sts: LocalSts, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sts = sts
        self._server = _Server((host, port), sts)
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sts-local",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningSts:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_local_sts(config: StsConfig, *, host: str = "127.0.0.1", port: int = 0,
                    clock: Callable[[], float] = time.time, fetch_timeout: float = 5.0) -> RunningSts:
    """Start a local STS on a background thread (port 0 picks a free port)."""
    return RunningSts(LocalSts(config, clock=clock, fetch_timeout=fetch_timeout), host, port)


def add_sts_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `sts-local` subcommand to the gitlab-sts CLI."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sts-local", help="run a local STS that checks web identity tokens like AWS (not AWS)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file of OIDC providers and roles")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to bind (default 8090)")
    parser.set_defaults(func=run_sts)
    return parser


def run_sts(args: argparse.Namespace) -> int:
    """Serve the local STS until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sts-local %(message)s")
    server = _Server((args.host, args.port), LocalSts(load_config(args.config)))
    log.info("local STS (not AWS) on http://%s:%d", args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
