"""The whole chain with real AWS clients: GitLab stand-in -> service -> local STS (which checks like AWS).

boto3's own web-identity provider and the AWS CLI (through a credential_process profile written by
`gitlab-sts login`) get credentials from tokens the real service minted; every AWS-side refusal reaches
the job with AWS's code and our hint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import subject_for
from gitlab_sts.core.trustpolicy import trust_policy
from gitlab_sts.testing.sts import RunningSts, start_local_sts
from gitlab_sts.testing.sts_config import parse_config
from tests.service.harness import EXAMPLES, FakeGitLabProcess, Service, start_service

STAGING = "arn:aws:iam::111122223333:role/payments-deploy-staging"
RELEASE = "arn:aws:iam::111122223333:role/payments-release"
READ_ONLY = "arn:aws:iam::111122223333:role/platform-read-only"
PRODUCTION = "arn:aws:iam::444455556666:role/payments-deploy-production"
UNKNOWN_ACCOUNT = "arn:aws:iam::999988887777:role/orphan"

ORPHAN = """apiVersion: gitlab-sts.io/v1alpha1
kind: GitLabAWSBinding
metadata: {name: orphan, namespace: team-payments}
spec:
  project: {path: platform/payments}
  rules: {environments: ["orphan"]}
  aws: {roleArn: "arn:aws:iam::999988887777:role/orphan"}
"""


def _accounts(bindings: Path, issuer: str) -> dict[str, Any]:
    """An AWS picture with one mistake per role but staging's, each of a kind users make."""
    roles = []
    for b in load_bindings_dir(bindings).bindings:
        policy = trust_policy(b, issuer, "sts.amazonaws.com")
        if b.spec.aws.role_arn == RELEASE:  # trusts another binding's sub
            policy = json.loads(json.dumps(policy).replace(b.subject, subject_for(b.namespace, "other")))
        if b.spec.aws.role_arn == READ_ONLY:  # forgot sts:TagSession although the binding sets tags
            policy["Statement"][0]["Action"] = ["sts:AssumeRoleWithWebIdentity"]
        roles.append({"arn": b.spec.aws.role_arn, "maxSessionDuration": 7200, "trustPolicy": policy})
    return {"providers": [
        {"url": issuer, "clientIds": ["sts.amazonaws.com"], "account": "111122223333"},
        # Production's account registered the provider with the wrong client id (audience).
        {"url": issuer, "clientIds": ["https://sts.example.com"], "account": "444455556666"},
    ], "roles": roles}


@pytest.fixture(scope="module")
def chain(fake_gitlab: FakeGitLabProcess,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, RunningSts]]:
    root = Path(tmp_path_factory.mktemp("chain"))
    bindings = root / "bindings-src"
    shutil.copytree(EXAMPLES, bindings)
    (bindings / "orphan.yaml").write_text(ORPHAN)
    # The STS must know the service's URL before the service starts: start the service first.
    svc = start_service(root / "svc", fake_gitlab, bindings=bindings, sts={"endpoint": "http://127.0.0.1:9"})
    sts = start_local_sts(parse_config(_accounts(bindings, svc.url)))
    svc.replace_settings(svc.settings_path.read_text().replace("http://127.0.0.1:9", sts.url))
    yield svc, sts
    svc.stop()
    sts.close()


def _staging_token(svc: Service, **claims: Any) -> str:
    return svc.job_token(environment="staging", environment_protected="false", **claims)


def test_credentials_end_to_end(chain: tuple[Service, RunningSts]) -> None:
    svc, _ = chain
    answer = svc.exchange(_staging_token(svc), path="/v1/credentials", duration_seconds="1800")
    assert answer.status_code == 200, answer.text
    creds = answer.json()
    assert creds["Version"] == 1
    assert creds["AccessKeyId"].startswith("ASIA")
    assert creds["SessionToken"].startswith("NOT-AWS-LOCAL-STS")
    assert creds["Expiration"].endswith("Z")
    # The session really is the role, named after the job, as STS reports to boto3.
    sts = boto3.client("sts", endpoint_url=chain[1].url, region_name="us-east-1",
                       aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                       aws_session_token=creds["SessionToken"])
    assert sts.get_caller_identity()["Arn"] == \
        "arn:aws:sts::111122223333:assumed-role/payments-deploy-staging/gitlab-4321-302"


REFUSALS = [
    pytest.param({"ref": "v3.0.0", "ref_type": "tag", "ref_path": "refs/tags/v3.0.0"}, RELEASE, "AccessDenied",
                 id="trust-policy-names-another-sub"),
    pytest.param({"ref": "feature/x", "ref_protected": "false"}, READ_ONLY, "AccessDenied",
                 id="missing-sts-TagSession"),
    pytest.param({"environment": "production", "environment_protected": "true"}, PRODUCTION,
                 "InvalidIdentityToken", id="provider-client-id-is-not-our-aud"),
    pytest.param({"environment": "orphan"}, UNKNOWN_ACCOUNT, "InvalidIdentityToken", id="no-provider-in-account"),
]


@pytest.mark.parametrize(("claims", "role", "code"), REFUSALS)
def test_aws_refusals_reach_the_job_with_code_and_hint(chain: tuple[Service, RunningSts], claims: dict[str, Any],
                                                       role: str, code: str) -> None:
    svc, _ = chain
    answer = svc.exchange(svc.job_token(**claims), path="/v1/credentials")
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["error"] == "invalid_target"
    assert body["sts_error"] == code
    assert body["role_arn"] == role
    assert f"AWS STS answered {code}" in body["error_description"]
    if code == "AccessDenied":
        policy = body["trust_policy"]
        statement = policy["Statement"][0]
        assert "sts:TagSession" in statement["Action"]
        wanted = subject_for(*body["binding"].split("/"))
        assert wanted in statement["Condition"]["StringEquals"].values()
    else:
        assert "OIDC provider" in body["error_description"]


def test_expired_minted_token_is_expired_token_exception(fake_gitlab: FakeGitLabProcess, tmp_path: Path) -> None:
    svc = start_service(tmp_path, fake_gitlab, sts={"endpoint": "http://127.0.0.1:9"})
    # This STS's clock runs two hours ahead: every token the service mints looks expired to it.
    sts = start_local_sts(parse_config(_accounts(EXAMPLES, svc.url)), clock=lambda: time.time() + 7200)
    try:
        svc.replace_settings(svc.settings_path.read_text().replace("http://127.0.0.1:9", sts.url))
        answer = svc.exchange(_staging_token(svc), path="/v1/credentials")
        assert answer.status_code == 403, answer.text
        assert answer.json()["sts_error"] == "ExpiredTokenException"
    finally:
        svc.stop()
        sts.close()


def test_boto3_web_identity_provider_with_a_minted_token(chain: tuple[Service, RunningSts], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    svc, sts = chain
    minted = svc.exchange(_staging_token(svc)).json()
    token_file = tmp_path / "token"
    token_file.write_text(minted["access_token"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ROLE_ARN", minted["role_arn"])
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", minted["role_session_name"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
    session = boto3.session.Session(region_name="us-east-1")
    creds = session.get_credentials()
    assert creds is not None
    assert creds.method == "assume-role-with-web-identity"
    frozen = creds.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA")


def test_aws_cli_through_a_profile_written_by_gitlab_sts_login(chain: tuple[Service, RunningSts],
                                                               tmp_path: Path) -> None:
    svc, sts = chain
    config = tmp_path / "aws-config"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(GITLAB_STS_ID_TOKEN=_staging_token(svc), GITLAB_STS_URL=svc.url, AWS_CONFIG_FILE=str(config),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    bin_dir = Path(sys.executable).parent
    written = subprocess.run([str(bin_dir / "gitlab-sts"), "login", "--format", "profile", "--role", STAGING,
                              "--profile", "staging", "--aws-config", str(config)],
                             env=env, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    assert "credential_process" in config.read_text()
    identity = subprocess.run([str(bin_dir / "aws"), "sts", "get-caller-identity", "--profile", "staging",
                               "--endpoint-url", sts.url, "--region", "us-east-1", "--output", "json"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert identity.returncode == 0, identity.stderr
    assert json.loads(identity.stdout)["Arn"].endswith(":assumed-role/payments-deploy-staging/gitlab-4321-302")
    assert env["GITLAB_STS_ID_TOKEN"] not in written.stderr + identity.stderr
