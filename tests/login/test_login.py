"""`gitlab-sts login` against a stand-in service: every format, several roles, every exit code, retries."""

from __future__ import annotations

import json
import os
import shlex
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts import login
from gitlab_sts.testing.tls import write_self_signed
from tests.login.conftest import (
    DEFAULT_ROLE,
    ID_TOKEN,
    MINTED,
    SECRET,
    SESSION_TOKEN,
    StandIn,
    credentials,
    serve,
)

ROLE_A = "arn:aws:iam::111122223333:role/deploy-a"
ROLE_B = "arn:aws:iam::444455556666:role/deploy-b"
FAST = ["--backoff", "0", "--timeout", "5"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = login.main(list(argv))
    out, err = capsys.readouterr()
    # Whatever happened, stderr never carries the ID token or a credential.
    for secret in (ID_TOKEN, SECRET, SESSION_TOKEN, MINTED):
        assert secret not in err
    return code, out, err


def exports(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        key, _, value = words[1].partition("=")
        values[key] = value
    return values


def test_env_format_sends_the_rfc8693_form(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--url", stand_in.url + "/", "--role", ROLE_A, "--duration", "1800",
                         "--region", "eu-west-1")
    assert (code, err) == (0, "")
    assert exports(out) == {
        "AWS_ACCESS_KEY_ID": credentials(ROLE_A)["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SESSION_TOKEN, "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z",
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert stand_in.requests == [("/v1/credentials", {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": ID_TOKEN,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "resource": ROLE_A,
        "duration_seconds": "1800"})]


def test_env_from_environment_defaults_without_role(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITLAB_STS_URL", stand_in.url)
    monkeypatch.setenv("MY_TOKEN", ID_TOKEN)
    monkeypatch.delenv("GITLAB_STS_ID_TOKEN")
    code, out, _ = run(capsys, "--token-var", "MY_TOKEN")
    assert code == 0 and exports(out)["AWS_ACCESS_KEY_ID"] == credentials()["AccessKeyId"]
    form = stand_in.requests[0][1]
    assert "resource" not in form and "duration_seconds" not in form


def test_credential_process_format(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [(200, {**credentials(ROLE_A), "Extra": "dropped"}, {})]
    code, out, _ = run(capsys, "--url", stand_in.url, "--role", ROLE_A, "--format", "credential-process")
    assert code == 0
    assert json.loads(out) == credentials(ROLE_A)


def test_profile_format_writes_one_refreshing_profile_per_role(
        stand_in: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "aws" / "config"
    config.parent.mkdir()
    config.write_text("# mine\n[default]\nregion = us-east-1\n\n[profile a]\nregion = old\nstale = yes\n"
                      "[profile keep]\noutput = json\n")
    argv = ["--url", stand_in.url, "--format", "profile", "--aws-config", str(config), "--region", "eu-central-1",
            "--role", ROLE_A, "--profile", "a", "--role", ROLE_B, "--profile", "b", "--duration", "900"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert exports(out) == {"AWS_CONFIG_FILE": str(config.resolve())}  # several profiles: no AWS_PROFILE
    text = config.read_text()
    assert text.startswith("# mine\n[default]\nregion = us-east-1\n")
    assert "stale" not in text and "[profile keep]\noutput = json" in text
    assert text.count("[profile a]") == 1 and text.count("[profile b]") == 1
    # The trial exchange ran once per role, and no credential was written anywhere.
    assert [(p, f["resource"]) for p, f in stand_in.requests] == [("/v1/credentials", ROLE_A),
                                                                  ("/v1/credentials", ROLE_B)]
    assert SECRET not in text and ID_TOKEN not in text
    processes = [line.split(" = ", 1)[1] for line in text.splitlines() if line.startswith("credential_process")]
    assert len(processes) == 2
    first = shlex.split(processes[0])
    assert first[:3] == [sys.executable, "-m", "gitlab_sts.login"]
    assert first[3:] == ["--format", "credential-process", "--url", stand_in.url, "--token-var",
                         "GITLAB_STS_ID_TOKEN", "--role", ROLE_A, "--duration", "900"]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # Running it again replaces the sections instead of adding more.
    assert run(capsys, *argv, "--no-check")[0] == 0
    assert config.read_text() == text
    assert len(stand_in.requests) == 2  # --no-check made no request


def test_one_profile_exports_aws_profile(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    code, out, _ = run(capsys, "--url", stand_in.url, "--format", "profile", "--profile", "default",
                       "--command", "/opt/gitlab sts login")
    assert code == 0 and exports(out) == {"AWS_PROFILE": "default"}
    assert config.read_text().splitlines()[:3] == [
        "[default]", "# written by gitlab-sts login; credentials refresh through the exchange service",
        f"credential_process = /opt/gitlab sts login --format credential-process --url {stand_in.url} "
        "--token-var GITLAB_STS_ID_TOKEN"]


def test_web_identity_format_writes_a_private_token_file(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    code, out, _ = run(capsys, "--url", stand_in.url, "--format", "web-identity", "--role", ROLE_A,
                       "--token-dir", str(tmp_path / "tokens"), "--duration", "900")
    assert code == 0
    values = exports(out)
    path = Path(values["AWS_WEB_IDENTITY_TOKEN_FILE"])
    assert values == {"AWS_ROLE_ARN": ROLE_A, "AWS_WEB_IDENTITY_TOKEN_FILE": str(path),
                      "AWS_ROLE_SESSION_NAME": "gitlab-1234-5678"}
    assert path == (tmp_path / "tokens" / "deploy-a.jwt").resolve()
    assert path.read_text() == MINTED + "deploy-a"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p for p, _ in stand_in.requests] == ["/v1/token"]
    assert "duration_seconds" not in stand_in.requests[0][1]


def test_web_identity_with_several_roles_writes_profiles(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITLAB_STS_TOKEN_DIR", str(tmp_path / "t"))
    config = tmp_path / "config"
    code, out, _ = run(capsys, "--url", stand_in.url, "--format", "web-identity", "--aws-config", str(config),
                       "--role", ROLE_A, "--profile", "a", "--role", ROLE_B, "--profile", "b")
    assert code == 0 and exports(out) == {"AWS_CONFIG_FILE": str(config.resolve())}
    text = config.read_text()
    for profile, role in (("a", ROLE_A), ("b", ROLE_B)):
        token_file = (tmp_path / "t" / f"{profile}.jwt").resolve()
        assert f"[profile {profile}]" in text and f"role_arn = {role}" in text
        assert f"web_identity_token_file = {token_file}" in text
        assert token_file.read_text() == MINTED + role.rsplit("/", 1)[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--role", ROLE_A], "no service URL"),
    (["--url", "ftp://x", "--role", ROLE_A], "must be an http(s) URL"),
    (["--url", "{url}", "--role", ROLE_A, "--role", ROLE_B], "takes one --role"),
    (["--url", "{url}", "--format", "credential-process", "--role", ROLE_A, "--role", ROLE_B], "takes one --role"),
    (["--url", "{url}", "--format", "profile", "--role", ROLE_A], "needs --profile"),
    (["--url", "{url}", "--format", "profile", "--role", ROLE_A, "--profile", "a", "--profile", "b"],
     "one --profile per --role"),
    (["--url", "{url}", "--format", "profile", "--role", ROLE_A, "--role", ROLE_B, "--profile", "a",
      "--profile", "a"], "must differ"),
    (["--url", "{url}", "--format", "profile", "--profile", "bad name"], "may hold only"),
    (["--url", "{url}", "--format", "web-identity", "--role", ROLE_A, "--role", ROLE_B], "needs one --profile"),
    (["--url", "{url}", "--ca-bundle", "/nonexistent/ca.pem"], "cannot use the CA bundle"),
])
def test_usage_errors_exit_2(stand_in: StandIn, capsys: pytest.CaptureFixture[str], argv: list[str],
                             message: str) -> None:
    code, out, err = run(capsys, *[a.replace("{url}", stand_in.url) for a in argv])
    assert (code, out) == (2, "")
    assert message in err and not stand_in.requests


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--duration", "60"], ["--format", "yaml"], ["--retries", "-1"]):
        with pytest.raises(SystemExit) as info:
            login.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("value", [None, "", "  \n"])
def test_missing_token_exits_3(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("GITLAB_STS_ID_TOKEN")
    else:
        monkeypatch.setenv("GITLAB_STS_ID_TOKEN", value)
    code, out, err = run(capsys, "--url", stand_in.url)
    assert (code, out) == (3, "")
    assert "GITLAB_STS_ID_TOKEN is unset or empty" in err and "id_tokens" in err
    assert not stand_in.requests


@pytest.mark.parametrize(("reply", "exit_code", "message"), [
    ((403, {"error": "invalid_target", "error_description": "no binding of platform/payments allows this job",
            "tried": [{"binding": "team-a/deploy", "claim": "ref", "expected": ["main"], "actual": "dev"}]}, {}),
     4, 'denied (HTTP 403, invalid_target: no binding of platform/payments allows this job\n  tried: [{"actual": '),
    ((400, {"error": "invalid_request", "error_description": "the GitLab token expired"}, {}),
     5, "request rejected (HTTP 400, invalid_request: the GitLab token expired)"),
    ((400, {"error": "unsupported_grant_type"}, {}), 5, "unsupported_grant_type"),
    ((404, b"<html>not found</html>", {}), 5, "request rejected (HTTP 404)"),
    ((200, b"<html>login page</html>", {}), 8, "not JSON"),
    ((200, [1, 2], {}), 8, "not an object"),
    ((200, {"Version": 2, "AccessKeyId": "A"}, {}), 8, "without valid credentials"),
    ((500, {"error": "server_error"}, {}), 8, "failed (HTTP 500, server_error)"),
    ((302, b"", {"Location": "https://elsewhere.example.com/"}), 8, "redirects (HTTP 302) to https://elsewhere"),
])
def test_service_answers_map_to_exit_codes(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                           reply: Any, exit_code: int, message: str) -> None:
    stand_in.script["/v1/credentials"] = [reply]
    code, out, err = run(capsys, "--url", stand_in.url, "--role", ROLE_A, *FAST)
    assert (code, out) == (exit_code, "")
    assert message in err
    assert len(stand_in.requests) == 1  # none of these is retried


def test_web_identity_answer_without_token_exits_8(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    stand_in.script["/v1/token"] = [(200, {"token_type": "N_A"}, {})]
    code, _, err = run(capsys, "--url", stand_in.url, "--format", "web-identity", "--token-dir", str(tmp_path))
    assert code == 8 and "without access_token" in err


def test_transient_answers_are_retried_then_succeed(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [(502, b"bad gateway", {}), (429, {"error": "slow_down"}, {}),
                                          (504, b"", {})]
    code, out, err = run(capsys, "--url", stand_in.url, "--role", ROLE_A, *FAST)
    assert code == 0 and exports(out)["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert len(stand_in.requests) == 4
    assert err.count("retrying in") == 3 and "(attempt 4 of 4)" in err


def test_unavailable_after_retries_exits_6(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [
        (503, {"error": "temporarily_unavailable", "error_description": "GitLab keys unreachable"}, {})] * 3
    code, out, err = run(capsys, "--url", stand_in.url, "--retries", "2", *FAST)
    assert (code, out) == (6, "")
    assert len(stand_in.requests) == 3
    assert "temporarily_unavailable: GitLab keys unreachable" in err and "gave up after 3 attempts" in err


def test_temporarily_unavailable_error_code_is_retried_even_as_400(
        stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [(400, {"error": "temporarily_unavailable"}, {})]
    assert run(capsys, "--url", stand_in.url, *FAST)[0] == 0
    assert len(stand_in.requests) == 2


def test_retry_after_and_backoff_delays(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [(429, b"", {"Retry-After": "7"}), (503, b"", {"Retry-After": "3600"}),
                                          (503, b"", {}), (503, b"", {})]
    sleeps: list[float] = []
    args = login.build_parser().parse_args(["--url", stand_in.url, "--retries", "4", "--backoff", "1"])
    assert exports(login.login(args, sleep=sleeps.append))["AWS_SESSION_TOKEN"] == SESSION_TOKEN
    assert sleeps[:2] == [7.0, login.MAX_RETRY_AFTER]
    assert 2.0 <= sleeps[2] <= 4.0 and 4.0 <= sleeps[3] <= 8.0  # backoff * 2^(attempt-1), jitter in [0.5, 1]
    capsys.readouterr()


def test_connection_refused_is_retried_then_exits_7(capsys: pytest.CaptureFixture[str]) -> None:
    with serve(StandIn()) as gone:
        url = gone.url
    code, out, err = run(capsys, "--url", url, "--retries", "1", *FAST)
    assert (code, out) == (7, "")
    assert "cannot reach" in err and "gave up after 2 attempts" in err


def test_timeout_is_retried_then_exits_7(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.delay = 1.0
    code, _, err = run(capsys, "--url", stand_in.url, "--retries", "1", "--backoff", "0", "--timeout", "0.2")
    assert code == 7 and "timed out" in err
    assert len(stand_in.requests) == 2


def test_unwritable_outputs_exit_9(stand_in: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "--url", stand_in.url, "--format", "profile", "--profile", "p", "--no-check",
                       "--aws-config", str(blocker / "config"))
    assert code == 9 and "cannot write" in err
    code, _, err = run(capsys, "--url", stand_in.url, "--format", "web-identity", "--token-dir", str(blocker))
    assert code == 9 and "cannot write" in err


def test_an_echoed_token_is_redacted(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.script["/v1/credentials"] = [(400, {"error": "invalid_request",
                                                 "error_description": f"bad token {ID_TOKEN}"}, {})]
    code, _, err = run(capsys, "--url", stand_in.url)
    assert code == 5 and "bad token [redacted]" in err


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    return write_self_signed(folder / "cert.pem", folder / "key.pem", "127.0.0.1")


def test_tls_is_verified(tls_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    with serve(StandIn(), tls=context) as secure:
        code, out, err = run(capsys, "--url", secure.url, *FAST)
        assert (code, out) == (7, "")
        assert "TLS failure" in err and "CERTIFICATE_VERIFY_FAILED" in err and "retrying" not in err
        assert not secure.requests
        monkeypatch.setenv("GITLAB_STS_CA_BUNDLE", str(tls_files[0]))
        code, out, _ = run(capsys, "--url", secure.url, *FAST)
        assert code == 0 and exports(out)["AWS_ACCESS_KEY_ID"] == credentials()["AccessKeyId"]
        assert secure.requests[0][0] == "/v1/credentials"


def test_default_token_dir_is_private(stand_in: StandIn, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(login.tempfile, "tempdir", None)
    code, out, _ = run(capsys, "--url", stand_in.url, "--format", "web-identity")
    assert code == 0
    path = Path(exports(out)["AWS_WEB_IDENTITY_TOKEN_FILE"])
    assert path.parent == (tmp_path / f"gitlab-sts-{os.getuid()}").resolve()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.name == DEFAULT_ROLE.rsplit("/", 1)[-1] + ".jwt"


def test_replace_profiles_keeps_unrelated_sections() -> None:
    text = "[profile x]\na = 1\n[ profile  y ]\nb = 2\n[sso-session s]\nc = 3\n"
    out = login.replace_profiles(text, {"y": ["z = 9"]})
    assert out == "[profile x]\na = 1\n[sso-session s]\nc = 3\n\n[profile y]\nz = 9\n"
    assert login.replace_profiles("", {"default": ["k = v"]}) == "[default]\nk = v\n"
