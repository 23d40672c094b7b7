"""The local STS's wire protocol, key fetching, configuration, and real AWS clients against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import boto3
import pytest
from botocore.exceptions import ClientError

from gitlab_sts.testing.sts import NAMESPACE, RunningSts, start_local_sts
from gitlab_sts.testing.sts_config import StsConfigError, load_config, parse_config
from gitlab_sts.testing.sts_token import KEY_NOT_FOUND
from tests.sts.conftest import ACCOUNT, SUB, Issuer, sts_client, sts_config_for

NS = {"s": NAMESPACE}
ROLE = f"arn:aws:iam::{ACCOUNT}:role/basic"
AWS = str(Path(sys.executable).with_name("aws"))


def post(url: str, params: dict[str, str], method: str = "POST") -> tuple[int, dict[str, str], ET.Element]:
    data = urllib.parse.urlencode(params)
    if method == "POST":
        request = urllib.request.Request(url + "/", data=data.encode(), method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    else:
        request = urllib.request.Request(url + "/?" + data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), ET.fromstring(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), ET.fromstring(exc.read())


def call(token: str, **extra: str) -> dict[str, str]:
    params = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": ROLE,
              "RoleSessionName": "job-1", "WebIdentityToken": token}
    params.update(extra)
    return {k: v for k, v in params.items() if v != "<absent>"}


def error_of(root: ET.Element) -> tuple[str, str, str]:
    assert root.tag == f"{{{NAMESPACE}}}ErrorResponse"
    assert root.findtext("s:RequestId", namespaces=NS)
    return (root.findtext("s:Error/s:Type", namespaces=NS) or "", root.findtext("s:Error/s:Code", namespaces=NS) or "",
            root.findtext("s:Error/s:Message", namespaces=NS) or "")


def test_form_post_success_xml_has_every_element(local_sts: RunningSts, issuer: Issuer) -> None:
    status, headers, root = post(local_sts.url, call(issuer.sign()))
    assert status == 200
    assert headers["Content-Type"] == "text/xml" and headers["X-Gitlab-Sts-Local"] == "not AWS"
    result = root.find("s:AssumeRoleWithWebIdentityResult", NS)
    assert result is not None
    for path in ("s:Credentials/s:AccessKeyId", "s:Credentials/s:SecretAccessKey", "s:Credentials/s:SessionToken",
                 "s:Credentials/s:Expiration", "s:SubjectFromWebIdentityToken", "s:Audience", "s:Provider",
                 "s:AssumedRoleUser/s:Arn", "s:AssumedRoleUser/s:AssumedRoleId"):
        assert result.findtext(path, namespaces=NS), path
    assert root.findtext("s:ResponseMetadata/s:RequestId", namespaces=NS)


def test_get_query_works_like_post(local_sts: RunningSts, issuer: Issuer) -> None:
    status, _, root = post(local_sts.url, call(issuer.sign()), method="GET")
    assert status == 200
    assert root.findtext("s:AssumeRoleWithWebIdentityResult/s:SubjectFromWebIdentityToken", namespaces=NS) == SUB


@pytest.mark.parametrize(("extra", "message"), [
    ({"RoleArn": "<absent>"}, "1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: "
                              "Member must not be null"),
    ({"RoleArn": "arn:aws:iam::1:role"}, "at 'roleArn' failed to satisfy constraint: Member must have length "
                                         "greater than or equal to 20"),
    ({"RoleArn": "arn:aws:iam::" + "1" * 2048}, "Member must have length less than or equal to 2048"),
    ({"RoleArn": "arn:aws:s3:::bucket-name-here"}, "Request ARN is invalid"),
    ({"RoleSessionName": "a"}, "Value 'a' at 'roleSessionName' failed to satisfy constraint: Member must have "
                               "length greater than or equal to 2"),
    ({"RoleSessionName": "a" * 65}, "Member must have length less than or equal to 64"),
    ({"WebIdentityToken": "abc"}, "Value '***' at 'webIdentityToken' failed to satisfy constraint: Member must "
                                  "have length greater than or equal to 4"),
    ({"WebIdentityToken": "a" * 20001}, "less than or equal to 20000"),
    ({"DurationSeconds": "899"}, "Member must have value greater than or equal to 900"),
    ({"DurationSeconds": "43201"}, "Member must have value less than or equal to 43200"),
    ({"DurationSeconds": "soon"}, "Member must be an integer"),
    ({"Policy": "x" * 2049}, "at 'policy' failed to satisfy constraint"),
    ({"RoleSessionName": "a", "DurationSeconds": "1"}, "2 validation errors detected: "),
])
def test_parameter_validation(local_sts: RunningSts, issuer: Issuer, extra: dict[str, str], message: str) -> None:
    status, _, root = post(local_sts.url, call(issuer.sign(), **extra))
    kind, code, text = error_of(root)
    assert (status, kind, code) == (400, "Sender", "ValidationError")
    assert message in text


def test_a_token_is_never_echoed_in_an_error(local_sts: RunningSts) -> None:
    token = "eyJub3QiOiJhIHRva2VuIn0.eyJzZWNyZXQiOiJzaGgifQ.c2ln"
    status, headers, root = post(local_sts.url, call(token, RoleSessionName="x"))
    assert status == 400
    assert token not in ET.tostring(root, encoding="unicode") and token not in json.dumps(headers)


def test_malformed_tokens(local_sts: RunningSts) -> None:
    for token in ("not-a-jwt", "a.b.c", "e30.e30.e30"):
        status, _, root = post(local_sts.url, call(token))
        assert (status, error_of(root)[1]) == (400, "InvalidIdentityToken")


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"Action": "AssumeRole", "Version": "2011-06-15"}, 400, "InvalidAction"),
    ({"Action": "AssumeRoleWithWebIdentity", "Version": "2010-01-01"}, 400, "InvalidAction"),
    ({"Action": "GetCallerIdentity", "Version": "2011-06-15"}, 403, "InvalidClientTokenId"),
])
def test_other_actions(local_sts: RunningSts, params: dict[str, str], status: int, code: str) -> None:
    got, _, root = post(local_sts.url, params)
    assert (got, error_of(root)[1]) == (status, code)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single(issuer: Issuer, **extra: Any) -> RunningSts:
    return start_local_sts(parse_config(sts_config_for(issuer, **extra)), fetch_timeout=2)


def test_unreachable_provider_is_an_idp_communication_error(signing_keys: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    fake = Issuer(keys=signing_keys)
    fake.url = url  # tokens claim an issuer nobody serves
    try:
        with _single(fake) as running:
            with pytest.raises(ClientError) as info:
                sts_client(running.url).assume_role_with_web_identity(
                    RoleArn=ROLE, RoleSessionName="s1", WebIdentityToken=fake.sign())
            assert info.value.response["Error"]["Code"] == "IDPCommunicationError"
            assert info.value.response["Error"]["Message"] == KEY_NOT_FOUND
    finally:
        fake.close()


@pytest.mark.parametrize(("change", "code", "detail"), [
    ({"discovery_override": {"issuer": "http://127.0.0.1:1/elsewhere"}}, "InvalidIdentityToken", "discovery issuer"),
    ({"discovery_override": {"jwks_uri": "http://keys.example.com/jwks.json"}}, "InvalidIdentityToken",
     "must be an https URL"),
    ({"discovery_override": {"jwks_uri": None}}, "InvalidIdentityToken", "no jwks_uri"),
    ({"status": 503}, "IDPCommunicationError", "HTTP 503"),
    ({"status": 404}, "InvalidIdentityToken", "HTTP 404"),
    ({"published": ["ec256"]}, "InvalidIdentityToken", "0 usable RSA keys"),
])
def test_bad_discovery_or_jwks(signing_keys: dict[str, Any], change: dict[str, Any], code: str, detail: str) -> None:
    odd = Issuer(keys=signing_keys, **change)
    try:
        with _single(odd) as running:
            with pytest.raises(ClientError) as info:
                sts_client(running.url).assume_role_with_web_identity(
                    RoleArn=ROLE, RoleSessionName="s1", WebIdentityToken=odd.sign())
            assert info.value.response["Error"]["Code"] == code
            assert detail in info.value.response["ResponseMetadata"]["HTTPHeaders"]["x-gitlab-sts-local-detail"]
    finally:
        odd.close()


@pytest.mark.parametrize(("seconds", "fetches"), [(60, 1), (0, 3)])
def test_jwks_is_cached_briefly(signing_keys: dict[str, Any], seconds: int, fetches: int) -> None:
    fresh = Issuer(keys=signing_keys)
    try:
        with _single(fresh, jwksCacheSeconds=seconds) as running:
            client = sts_client(running.url)
            for _ in range(3):
                client.assume_role_with_web_identity(RoleArn=ROLE, RoleSessionName="s1",
                                                     WebIdentityToken=fresh.sign())
            assert running.sts.fetcher.fetches == fetches
    finally:
        fresh.close()


@pytest.mark.parametrize(("config", "problem"), [
    ({"providers": [{"url": "http://gitlab.example.com", "clientIds": ["a"]}]}, "https URL"),
    ({"providers": [{"url": "https://x.example.com?q=1", "clientIds": ["a"]}]}, "query"),
    ({"providers": [{"url": "https://x.example.com", "clientIds": []}]}, "clientIds"),
    ({"providers": [{"url": "https://x.example.com", "clientIds": ["a"]}] * 2}, "registered twice"),
    ({"roles": [{"arn": "arn:aws:iam::1:role/x", "trustPolicy": {}}]}, "IAM role ARN"),
    ({"roles": [{"arn": f"arn:aws:iam::{ACCOUNT}:role/x", "maxSessionDuration": 60, "trustPolicy": {}}]},
     "3600-43200"),
    ({"roles": [{"arn": f"arn:aws:iam::{ACCOUNT}:role/x", "trustPolicy": {"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "sts:*", "Resource": "*"}]}}]}, "Resource"),
    ({"roles": [{"arn": f"arn:aws:iam::{ACCOUNT}:role/x", "trustPolicy": {"Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "sts:*",
         "Condition": {"ForAnyValue:StringLike": {"aws:TagKeys": "x"}}}]}}]}, "not supported"),
    ({"roles": [{"arn": f"arn:aws:iam::{ACCOUNT}:role/x", "trustPolicy": "{nope"}]}, "not JSON"),
    ({"account": "12"}, "12 digits"),
])
def test_configuration_errors(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(StsConfigError, match=problem):
        parse_config(config)


def test_yaml_file_and_json_string_trust_policy(tmp_path: Path) -> None:
    path = tmp_path / "sts.yaml"
    path.write_text(f"""
providers:
  - url: https://sts.example.com/path
    clientIds: [sts.amazonaws.com]
roles:
  - arn: arn:aws:iam::{ACCOUNT}:role/x
    trustPolicy: '{{"Statement": {{"Effect": "Allow", "Principal": {{"Federated": "p"}},
                   "Action": "sts:AssumeRoleWithWebIdentity"}}}}'
""")
    config = load_config(path)
    assert config.providers[0].arn == "arn:aws:iam::123456789012:oidc-provider/sts.example.com/path"
    assert config.role(f"arn:aws:iam::{ACCOUNT}:role/x") is not None
    with pytest.raises(StsConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_boto3_web_identity_provider_gets_credentials(local_sts: RunningSts, issuer: Issuer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(issuer.sign())
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "sdk-session")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", local_sts.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    session = boto3.Session()
    credentials = session.get_credentials()
    assert credentials is not None and credentials.method == "assume-role-with-web-identity"
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA") and frozen.token.startswith("NOT-AWS-LOCAL-STS/")
    # A signed call with those credentials: the local STS knows the session it issued.
    identity = session.client("sts").get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic/sdk-session"
    assert identity["Account"] == ACCOUNT


def _aws_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    return env


def test_aws_cli_assume_role_with_web_identity(local_sts: RunningSts, issuer: Issuer, tmp_path: Path) -> None:
    base = [AWS, "sts", "assume-role-with-web-identity", "--endpoint-url", local_sts.url,
            "--role-session-name", "cli", "--web-identity-token", issuer.sign(), "--output", "json"]
    ok = subprocess.run([*base, "--role-arn", ROLE, "--duration-seconds", "900"], capture_output=True, text=True,
                        env=_aws_env(tmp_path), timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic/cli"
    assert answer["Credentials"]["AccessKeyId"].startswith("ASIA")
    denied = subprocess.run([*base, "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/other-provider"],
                            capture_output=True, text=True, env=_aws_env(tmp_path), timeout=60, check=False)
    assert denied.returncode != 0
    assert "(AccessDenied)" in denied.stderr
    assert "Not authorized to perform sts:AssumeRoleWithWebIdentity" in denied.stderr
