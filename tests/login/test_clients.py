"""The job client as jobs run it: a lone stdlib-only file, a shell `eval`, the AWS CLI and boto3 consuming it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import boto3
import pytest

from gitlab_sts import login
from gitlab_sts.testing.sts import RunningSts
from tests.login.conftest import ID_TOKEN, SECRET, SESSION_TOKEN, Reply, StandIn
from tests.sts.conftest import (  # noqa: F401 (issuer, local_sts, signing_keys: fixtures shared with tests/sts)
    ACCOUNT,
    Issuer,
    issuer,
    local_sts,
    signing_keys,
    sts_client,
)

LOGIN = str(Path(login.__file__).resolve())
AWS = str(Path(sys.executable).with_name("aws"))
BASIC = f"arn:aws:iam::{ACCOUNT}:role/basic"
LONG = f"arn:aws:iam::{ACCOUNT}:role/long"


def test_login_imports_only_the_standard_library() -> None:
    # -I ignores PYTHON* variables and the user site, -S skips site-packages: third-party imports would fail.
    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], '--format', 'env']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n"
             "    code = exc.code\n"
             "extra = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names "
             "and m != '__main__')\n"
             "print(code, extra)")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe, LOGIN], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2 []"  # ran to its usage error (no URL) importing nothing else
    # Run as a plain file, as a job runs the copy it downloaded: its folder is sys.path[0].
    helped = subprocess.run([sys.executable, "-S", LOGIN, "--help"], capture_output=True, text=True,
                            timeout=30, check=False, env={"PATH": os.environ.get("PATH", "")})
    assert helped.returncode == 0, helped.stderr
    assert "Exit codes" in helped.stdout


def test_eval_in_a_shell_with_the_lone_file(stand_in: StandIn) -> None:
    script = f'set -e; eval "$({shlex.join([sys.executable, "-I", "-S", LOGIN])} --url {stand_in.url})"; ' \
             'echo "$AWS_ACCESS_KEY_ID|$AWS_SECRET_ACCESS_KEY|$AWS_CREDENTIAL_EXPIRATION"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    key, secret, expiration = done.stdout.strip().split("|")
    assert key.startswith("ASIA") and secret == SECRET and expiration == "2099-01-01T00:00:00Z"
    assert done.stderr == ""


def test_exit_code_reaches_the_shell(stand_in: StandIn) -> None:
    stand_in.script["/v1/credentials"] = [(403, {"error": "invalid_target", "error_description": "no"}, {})]
    done = subprocess.run([sys.executable, "-I", "-S", LOGIN, "--url", stand_in.url], capture_output=True,
                          text=True, timeout=30, check=False, env=dict(os.environ))
    assert (done.returncode, done.stdout) == (4, "")
    assert ID_TOKEN not in done.stderr and "invalid_target: no" in done.stderr


@pytest.fixture
def backed_by_local_sts(stand_in: StandIn, issuer: Issuer, local_sts: RunningSts) -> StandIn:  # noqa: F811
    """A stand-in whose answers come from the local STS, as the real service's will."""
    client = sts_client(local_sts.url)

    def answer(path: str, form: dict[str, str]) -> Reply:
        role = form.get("resource", BASIC)
        if path == "/v1/token":
            return 200, {"access_token": issuer.sign(), "role_arn": role, "expires_in": 300,
                         "issued_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_type": "N_A",
                         "binding": "team-a/deploy", "role_session_name": "gitlab-77"}, {}
        kwargs: dict[str, Any] = {}
        if "duration_seconds" in form:
            kwargs["DurationSeconds"] = int(form["duration_seconds"])
        creds = client.assume_role_with_web_identity(RoleArn=role, RoleSessionName="gitlab-77",
                                                     WebIdentityToken=issuer.sign(), **kwargs)["Credentials"]
        return 200, {"Version": 1, "AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
                     "SessionToken": creds["SessionToken"],
                     "Expiration": creds["Expiration"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, {}

    stand_in.fallback = answer
    return stand_in


def test_aws_cli_runs_the_written_profiles_as_credential_process(
        backed_by_local_sts: StandIn, local_sts: RunningSts, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config"
    command = shlex.join([sys.executable, "-I", "-S", LOGIN])
    code = login.main(["--url", backed_by_local_sts.url, "--format", "profile", "--aws-config", str(config),
                       "--region", "us-east-1", "--command", command, "--duration", "900",
                       "--role", BASIC, "--profile", "a", "--role", LONG, "--profile", "b"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    checked = len(backed_by_local_sts.requests)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", GITLAB_STS_ID_TOKEN=ID_TOKEN)
    for profile, role in (("a", "basic"), ("b", "long")):
        done = subprocess.run([AWS, "sts", "get-caller-identity", "--profile", profile, "--endpoint-url",
                               local_sts.url, "--output", "json"], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/gitlab-77"
    # Each aws command ran login.py as its credential_process (awscli v1 may resolve credentials twice).
    later = backed_by_local_sts.requests[checked:]
    assert len(later) >= 2 and {f["resource"] for _, f in later} == {BASIC, LONG}
    assert all(f["duration_seconds"] == "900" for _, f in later)


def test_boto3_uses_the_web_identity_exports(backed_by_local_sts: StandIn, local_sts: RunningSts,  # noqa: F811
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    code = login.main(["--url", backed_by_local_sts.url, "--format", "web-identity", "--role", BASIC,
                       "--token-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        monkeypatch.setenv(key, value.strip("'"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", local_sts.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    identity = boto3.Session().client("sts").get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic/gitlab-77"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_and_sed_snippet_of_the_docs(stand_in: StandIn) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "job-client.md").read_text()
    assert 'field() { printf \'%s\' "$creds" | sed -n' in docs
    script = r'''set -eu
creds=$(curl -fsS --retry 3 --retry-connrefused \
  --data-urlencode grant_type=urn:ietf:params:oauth:grant-type:token-exchange \
  --data-urlencode subject_token_type=urn:ietf:params:oauth:token-type:jwt \
  --data-urlencode "subject_token=$GITLAB_STS_ID_TOKEN" \
  --data-urlencode resource=arn:aws:iam::123456789012:role/payments-deploy \
  "$GITLAB_STS_URL/v1/credentials")
field() { printf '%s' "$creds" | sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"; }
export AWS_ACCESS_KEY_ID=$(field AccessKeyId)
export AWS_SECRET_ACCESS_KEY=$(field SecretAccessKey)
export AWS_SESSION_TOKEN=$(field SessionToken)
echo "$AWS_ACCESS_KEY_ID|$AWS_SECRET_ACCESS_KEY|$AWS_SESSION_TOKEN"
'''
    env = dict(os.environ, GITLAB_STS_URL=stand_in.url)
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    key, secret, session = done.stdout.strip().split("|")
    assert key.startswith("ASIAEXAMPLE") and secret == SECRET and session == SESSION_TOKEN
    assert stand_in.requests[0][1]["subject_token"] == ID_TOKEN
