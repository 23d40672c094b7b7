"""gitlab-sts login: exchange a GitLab CI ID token for AWS credentials, inside a job.

Standard library only, so the file also runs on its own: ``python3 login.py --url ... --role ...``
(or ``gitlab-sts login ...`` when the package is installed). It reads the job's ID token from an
environment variable (``--token-var``, default ``GITLAB_STS_ID_TOKEN``), sends it to the exchange
service (``--url`` or ``GITLAB_STS_URL``; TLS verified, ``--ca-bundle`` or ``GITLAB_STS_CA_BUNDLE``
for a private CA) and writes, by ``--format``:

``env`` (default)
    ``export AWS_ACCESS_KEY_ID=...`` lines (POST /v1/credentials) for ``eval "$(gitlab-sts login)"``.
``credential-process``
    the JSON an AWS ``credential_process`` prints, so SDKs refresh through the service themselves.
``profile``
    one ``[profile NAME]`` section per ``--role``/``--profile`` pair in ``--aws-config`` that runs this
    program as its ``credential_process`` (tried once now, unless ``--no-check``).
``web-identity``
    POST /v1/token, writes the minted token to a 0600 file and prints ``AWS_WEB_IDENTITY_TOKEN_FILE``,
    ``AWS_ROLE_ARN`` and ``AWS_ROLE_SESSION_NAME`` exports (or, with ``--profile``, writes
    ``web_identity_token_file`` profiles) so SDKs call STS themselves.

Messages go to stderr and never contain the ID token or a credential. Exit codes:

== =====================================================================================
0  success
2  usage error (bad or conflicting arguments, no service URL)
3  the ID token variable is unset or empty
4  denied: no binding lets this job have the role (``invalid_target``)
5  the token or request was rejected (``invalid_request`` and any other 4xx answer)
6  the service stayed unavailable after retries (429, 502, 503, 504, ``temporarily_unavailable``)
7  network or TLS failure (connection refused, DNS, timeout after retries; untrusted certificate)
8  unexpected answer from the service (not JSON, fields missing, redirect, other 5xx)
9  an output file (AWS config, token file) could not be written
== =====================================================================================

Connection errors, timeouts, 429, 502, 503 and 504 are retried with exponential backoff and
jitter (``--retries``, ``--backoff``), honouring ``Retry-After``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shlex
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URN, not a secret)
DEFAULT_TOKEN_VAR = "GITLAB_STS_ID_TOKEN"  # noqa: S105 (a variable name)
FORMATS = ("env", "credential-process", "profile", "web-identity")
CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
RETRY_STATUSES = (429, 502, 503, 504)
MAX_RETRY_AFTER = 30.0
MAX_BACKOFF = 10.0

EXIT_USAGE = 2
EXIT_NO_TOKEN = 3
EXIT_DENIED = 4
EXIT_REJECTED = 5
EXIT_UNAVAILABLE = 6
EXIT_NETWORK = 7
EXIT_BAD_ANSWER = 8
EXIT_WRITE = 9


class LoginError(Exception):
    """A failure with its exit code and a message safe to print."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # Never resend the ID token to a URL the user did not name.
        return None


def _say(message: str) -> None:
    print(f"gitlab-sts login: {message}", file=sys.stderr, flush=True)


def _transient_reason(exc: BaseException) -> str | None:
    """Why a transport failure is worth retrying, or None if it is not (TLS trust problems)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLError):  # SSLCertVerificationError included
        return None
    return str(reason) or type(reason).__name__


class ServiceClient:
    """Calls the exchange service with retries; answers are JSON objects."""

    def __init__(self, url: str, *, ca_bundle: str | None, timeout: float, retries: int, backoff: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        try:
            context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise LoginError(EXIT_USAGE, f"cannot use the CA bundle {ca_bundle}: {exc}") from None
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def post(self, path: str, fields: dict[str, str]) -> dict[str, Any]:
        """POST a form and return the JSON answer, retrying transient failures."""
        body = urllib.parse.urlencode(fields).encode()
        target = self.url + path
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._once(target, body)
            except _Retry as retry:
                if attempt == attempts:
                    raise LoginError(retry.exit_code, f"{retry.message} (gave up after {attempts} attempts)") from None
                delay = retry.after if retry.after is not None else self._delay(attempt)
                _say(f"{retry.message}; retrying in {delay:.1f}s (attempt {attempt + 1} of {attempts})")
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int) -> float:
        # Jitter keeps many jobs of one pipeline from retrying in lockstep.
        base: float = min(MAX_BACKOFF, self.backoff * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)  # noqa: S311 (not cryptographic)

    def _once(self, target: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the URL's scheme is checked in _check_url)
            target, data=body, method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return _json_object(response.read(), target, response.status)
        except urllib.error.HTTPError as exc:
            raise _answer_error(exc, target) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = _transient_reason(exc)
            if reason is None:
                raise LoginError(EXIT_NETWORK, f"TLS failure talking to {target}: {_reason_text(exc)} "
                                 "(set --ca-bundle or GITLAB_STS_CA_BUNDLE to the service's CA)") from None
            raise _Retry(EXIT_NETWORK, f"cannot reach {target}: {reason}") from None


class _Retry(Exception):
    def __init__(self, exit_code: int, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.after = after


def _reason_text(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return str(reason)


def _json_object(raw: bytes, target: str, status: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LoginError(EXIT_BAD_ANSWER, f"{target} answered HTTP {status} with a body that is not JSON") from None
    if not isinstance(value, dict):
        raise LoginError(EXIT_BAD_ANSWER, f"{target} answered HTTP {status} with JSON that is not an object")
    return value


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(MAX_RETRY_AFTER, float(value.strip()))


def _answer_error(exc: urllib.error.HTTPError, target: str) -> Exception:
    status = exc.code
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error", ""))
    described = _describe(body)
    if status in RETRY_STATUSES or error == "temporarily_unavailable":
        return _Retry(EXIT_UNAVAILABLE, f"{target} is unavailable (HTTP {status}{described})",
                      _retry_after(exc.headers.get("Retry-After") if exc.headers else None))
    if 300 <= status < 400:
        location = exc.headers.get("Location", "?") if exc.headers else "?"
        return LoginError(EXIT_BAD_ANSWER, f"{target} redirects (HTTP {status}) to {location}; "
                          "give the final service URL in --url")
    if error == "invalid_target":
        return LoginError(EXIT_DENIED, f"denied (HTTP {status}{described})")
    if 400 <= status < 500:
        return LoginError(EXIT_REJECTED, f"request rejected (HTTP {status}{described})")
    return LoginError(EXIT_BAD_ANSWER, f"{target} failed (HTTP {status}{described})")


def _describe(body: dict[str, Any]) -> str:
    """The service's error fields as readable text: code, description, then any details."""
    if not body:
        return ""
    parts = [str(body.get("error", "error"))]
    if body.get("error_description"):
        parts.append(str(body["error_description"]))
    text = ", " + ": ".join(parts)
    for key, value in body.items():
        if key not in ("error", "error_description"):
            text += f"\n  {key}: {json.dumps(value, sort_keys=True)}"
    return text


def _credentials(answer: dict[str, Any], target: str) -> dict[str, Any]:
    """Check a credential_process answer and return exactly its five fields."""
    missing = [f for f in CREDENTIAL_FIELDS if not isinstance(answer.get(f), str) or not answer[f]]
    if answer.get("Version") != 1 or missing:
        raise LoginError(EXIT_BAD_ANSWER, f"{target} answered without valid credentials "
                         f"(Version {answer.get('Version')!r}, missing {', '.join(missing) or 'nothing'})")
    return {"Version": 1, **{f: answer[f] for f in CREDENTIAL_FIELDS}}


def _minted(answer: dict[str, Any], target: str) -> dict[str, Any]:
    if not isinstance(answer.get("access_token"), str) or not isinstance(answer.get("role_arn"), str):
        raise LoginError(EXIT_BAD_ANSWER, f"{target} answered without access_token and role_arn")
    return answer


def _check_url(url: str | None) -> str:
    if not url:
        raise LoginError(EXIT_USAGE, "no service URL: pass --url or set GITLAB_STS_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise LoginError(EXIT_USAGE, f"--url must be an http(s) URL without query, got {url!r}")
    return url.rstrip("/")


def _read_token(variable: str) -> str:
    token = os.environ.get(variable, "").strip()
    if not token:
        raise LoginError(EXIT_NO_TOKEN, f"the variable {variable} is unset or empty: declare it in the job, e.g. "
                         f"`id_tokens: {{{variable}: {{aud: <service URL>}}}}`, or name another with --token-var")
    return token


def _pairs(roles: list[str], profiles: list[str], fmt: str) -> list[tuple[str | None, str | None]]:
    """Match roles with profile names by position, refusing combinations a format cannot express."""
    if profiles and len(profiles) != max(len(roles), 1):
        raise LoginError(EXIT_USAGE, f"give one --profile per --role ({len(roles)} roles, {len(profiles)} profiles)")
    for name in profiles:
        if not re.fullmatch(r"[A-Za-z0-9_.@+=-]+", name):
            raise LoginError(EXIT_USAGE, f"profile name {name!r} may hold only letters, digits and _.@+=-")
    if len(set(profiles)) != len(profiles):
        raise LoginError(EXIT_USAGE, "profile names must differ")
    if fmt == "profile" and not profiles:
        raise LoginError(EXIT_USAGE, "--format profile needs --profile NAME (one per --role)")
    if fmt in ("env", "credential-process") and len(roles) > 1:
        raise LoginError(EXIT_USAGE, f"--format {fmt} takes one --role; use --format profile for several")
    if fmt == "web-identity" and len(roles) > 1 and not profiles:
        raise LoginError(EXIT_USAGE, "--format web-identity with several roles needs one --profile per role")
    padded_roles: list[str | None] = list(roles) or [None]
    padded_profiles: list[str | None] = list(profiles) or [None] * len(padded_roles)
    return list(zip(padded_roles, padded_profiles, strict=True))


def _fields(token: str, role: str | None, duration: int | None) -> dict[str, str]:
    fields = {"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": SUBJECT_TOKEN_TYPE}
    if role:
        fields["resource"] = role
    if duration is not None:
        fields["duration_seconds"] = str(duration)
    return fields


def _exports(values: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (readers never see half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise LoginError(EXIT_WRITE, f"cannot write {path}: {exc.strerror or exc}") from None


def _section_header(profile: str) -> str:
    return "[default]" if profile == "default" else f"[profile {profile}]"


def replace_profiles(text: str, sections: dict[str, list[str]]) -> str:
    """Replace (or append) whole `[profile NAME]` sections of an AWS config file, keeping the rest."""
    wanted = {_section_header(p).replace(" ", ""): p for p in sections}
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped.replace(" ", "") in wanted
        if not skipping:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    for profile, body in sections.items():
        if out:
            out.append("")
        out.append(_section_header(profile))
        out.extend(body)
    return "\n".join(out) + "\n"


def _self_command() -> list[str]:
    """The command that runs this client again with the interpreter running it now (no PATH needed)."""
    if __package__:
        # Installed: run the module, not the file, so the package's own folder is not put on sys.path.
        return [sys.executable, "-m", f"{__package__}.login"]
    return [sys.executable, str(Path(__file__).resolve())]


def _process_command(args: argparse.Namespace, url: str, role: str | None) -> str:
    command = shlex.split(args.command) if args.command else _self_command()
    command += ["--format", "credential-process", "--url", url, "--token-var", args.token_var]
    if role:
        command += ["--role", role]
    if args.ca_bundle:
        command += ["--ca-bundle", str(Path(args.ca_bundle).resolve())]
    if args.duration is not None:
        command += ["--duration", str(args.duration)]
    return shlex.join(command)


def _aws_config_path(args: argparse.Namespace) -> Path:
    if args.aws_config:
        return Path(args.aws_config)
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")


def _update_aws_config(path: Path, sections: dict[str, list[str]]) -> None:
    try:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise LoginError(EXIT_WRITE, f"cannot read {path}: {exc.strerror or exc}") from None
    _write_private(path, replace_profiles(current, sections))


def _token_path(args: argparse.Namespace, profile: str | None, role_arn: str) -> Path:
    base = Path(args.token_dir or os.environ.get("GITLAB_STS_TOKEN_DIR")
                or Path(tempfile.gettempdir()) / f"gitlab-sts-{os.getuid()}")
    name = profile or role_arn.rsplit("/", 1)[-1]
    return base / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".jwt")


def login(args: argparse.Namespace, *, sleep: Callable[[float], None] = time.sleep) -> str:
    """Run one login and return what goes to stdout (raises LoginError)."""
    url = _check_url(args.url)
    pairs = _pairs(args.role or [], args.profile or [], args.format)
    token = _read_token(args.token_var)
    client = ServiceClient(url, ca_bundle=args.ca_bundle, timeout=args.timeout, retries=args.retries,
                           backoff=args.backoff, sleep=sleep)
    region = {"region": args.region} if args.region else {}
    if args.format in ("env", "credential-process"):
        creds = _credentials(client.post("/v1/credentials", _fields(token, pairs[0][0], args.duration)),
                             url + "/v1/credentials")
        if args.format == "credential-process":
            return json.dumps(creds) + "\n"
        values = {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                  "AWS_SESSION_TOKEN": creds["SessionToken"], "AWS_CREDENTIAL_EXPIRATION": creds["Expiration"]}
        if args.region:
            values.update(AWS_REGION=args.region, AWS_DEFAULT_REGION=args.region)
        return _exports(values)
    config_path = _aws_config_path(args)
    sections: dict[str, list[str]] = {}
    exports: dict[str, str] = {}
    for role, profile in pairs:
        if args.format == "profile":
            if not args.no_check:
                # Fail in the login step, where the reason is printed, not later inside an aws command.
                _credentials(client.post("/v1/credentials", _fields(token, role, args.duration)),
                             url + "/v1/credentials")
            body = ["# written by gitlab-sts login; credentials refresh through the exchange service",
                    f"credential_process = {_process_command(args, url, role)}"]
        else:
            minted = _minted(client.post("/v1/token", _fields(token, role, None)), url + "/v1/token")
            path = _token_path(args, profile, minted["role_arn"])
            _write_private(path, minted["access_token"])
            session = str(minted.get("role_session_name") or "")
            if profile is None:
                exports = {"AWS_ROLE_ARN": minted["role_arn"], "AWS_WEB_IDENTITY_TOKEN_FILE": str(path.resolve())}
                if session:
                    exports["AWS_ROLE_SESSION_NAME"] = session
                if args.region:
                    exports.update(AWS_REGION=args.region, AWS_DEFAULT_REGION=args.region)
                continue
            body = ["# written by gitlab-sts login; the token file expires, run login again to renew it",
                    f"role_arn = {minted['role_arn']}", f"web_identity_token_file = {path.resolve()}"]
            if session:
                body.append(f"role_session_name = {session}")
        body += [f"{k} = {v}" for k, v in region.items()]
        assert profile is not None
        sections[profile] = body
    if sections:
        _update_aws_config(config_path, sections)
        if args.aws_config:
            exports["AWS_CONFIG_FILE"] = str(config_path.resolve())
        if len(sections) == 1:
            exports["AWS_PROFILE"] = next(iter(sections))
    return _exports(exports)


def _nonnegative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def _duration(value: str) -> int:
    number = int(value)
    if not 900 <= number <= 43200:
        raise argparse.ArgumentTypeError("must be 900-43200 seconds (AWS's range)")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("GITLAB_STS_URL"),
                        help="exchange service base URL (default: $GITLAB_STS_URL)")
    parser.add_argument("--token-var", default=DEFAULT_TOKEN_VAR,
                        help=f"environment variable holding the GitLab ID token (default {DEFAULT_TOKEN_VAR})")
    parser.add_argument("--role", action="append", metavar="ARN",
                        help="role ARN to ask for (repeatable; omitted: the one binding that matches)")
    parser.add_argument("--profile", action="append", metavar="NAME",
                        help="AWS profile name for the --role at the same position (repeatable)")
    parser.add_argument("--format", choices=FORMATS, default="env", help="what to write (default env)")
    parser.add_argument("--duration", type=_duration, metavar="SECONDS", help="AWS session duration (900-43200)")
    parser.add_argument("--region", help="AWS region to export or write into profiles")
    parser.add_argument("--ca-bundle", default=os.environ.get("GITLAB_STS_CA_BUNDLE"),
                        help="CA certificates for the service's TLS (default: $GITLAB_STS_CA_BUNDLE)")
    parser.add_argument("--aws-config", metavar="FILE",
                        help="AWS config file for profiles (default: $AWS_CONFIG_FILE or ~/.aws/config)")
    parser.add_argument("--token-dir", metavar="DIR",
                        help="where web-identity token files go (default: $GITLAB_STS_TOKEN_DIR or a private "
                             "directory under the system temp dir)")
    parser.add_argument("--command", metavar="CMD",
                        help="command that profiles run as credential_process (default: this file, run by "
                             "this Python)")
    parser.add_argument("--no-check", action="store_true",
                        help="profile format: do not try each role once while writing the profiles")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--retries", type=_nonnegative_int, default=3,
                        help="retries of transient failures (default 3)")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (default 0.5)")


def add_login_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `login` subcommand to the gitlab-sts CLI."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "login", help="exchange the job's GitLab ID token for AWS credentials",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=run_login)
    return parser


def run_login(args: argparse.Namespace) -> int:
    """Run `login` with parsed arguments; print the result and return the exit code."""
    try:
        output = login(args)
    except LoginError as error:
        _say(_redact(error.message, args.token_var))
        return error.exit_code
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0


def _redact(message: str, token_var: str) -> str:
    # Belt and braces: the service never echoes the token, but a proxy or a bug might.
    for name in (token_var, DEFAULT_TOKEN_VAR):
        value = os.environ.get(name, "").strip()
        if len(value) >= 16:
            message = message.replace(value, "[redacted]")
    return message


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the standalone program (same options as `gitlab-sts login`)."""
    parser = argparse.ArgumentParser(prog="gitlab-sts login", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point when this file runs on its own (`python3 login.py ...`)."""
    return run_login(build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
