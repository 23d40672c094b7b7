"""The local STS against tokens AWS is documented (or observed) to accept or reject, through real boto3."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from joserfc import jwk

from gitlab_sts.testing.sts_token import KEY_NOT_FOUND
from tests.sts.conftest import ACCOUNT, SUB, Issuer

KEY_NOT_FOUND_RE = re.escape(KEY_NOT_FOUND)
TAGS = "https://aws.amazon.com/tags"
SOURCE = "https://aws.amazon.com/source_identity"


def arn(role: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{role}"


def assume(client: Any, token: str, role: str = "basic", session: str = "job-1", **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = client.assume_role_with_web_identity(
        RoleArn=arn(role), RoleSessionName=session, WebIdentityToken=token, **extra)
    return response


def refusal(client: Any, token: str, role: str = "basic", **extra: Any) -> tuple[str, str, int]:
    code, message, status, _ = refusal_with_detail(client, token, role, **extra)
    return code, message, status


def refusal_with_detail(client: Any, token: str, role: str = "basic", **extra: Any) -> tuple[str, str, int, str]:
    with pytest.raises(ClientError) as info:
        assume(client, token, role, **extra)
    error = info.value.response["Error"]
    meta = info.value.response["ResponseMetadata"]
    return error["Code"], error["Message"], meta["HTTPStatusCode"], meta["HTTPHeaders"].get(
        "x-gitlab-sts-local-detail", "")


def test_accepts_a_valid_token_and_answers_in_the_shape_of_aws(client: Any, issuer: Issuer) -> None:
    before = datetime.now(UTC)
    response = assume(client, issuer.sign())
    creds = response["Credentials"]
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", creds["AccessKeyId"])
    assert len(creds["SecretAccessKey"]) == 40
    assert creds["SessionToken"].startswith("NOT-AWS-LOCAL-STS/")
    assert before + timedelta(seconds=3590) <= creds["Expiration"] <= before + timedelta(seconds=3610)
    assert response["SubjectFromWebIdentityToken"] == SUB
    assert response["Audience"] == "sts.amazonaws.com"
    host = issuer.url.split("://", 1)[1]
    assert response["Provider"] == f"arn:aws:iam::{ACCOUNT}:oidc-provider/{host}"
    user = response["AssumedRoleUser"]
    assert user["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/basic/job-1"
    assert re.fullmatch(r"AROA[A-Z2-7]{17}:job-1", user["AssumedRoleId"])
    assert "PackedPolicySize" not in response and "SourceIdentity" not in response
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-gitlab-sts-local"] == "not AWS"
    assert re.fullmatch(r"[0-9a-f-]{36}", response["ResponseMetadata"]["RequestId"])


def test_role_id_is_stable_and_the_role_path_is_not_in_the_session_arn(client: Any, issuer: Issuer) -> None:
    first = assume(client, issuer.sign(), session="a1")["AssumedRoleUser"]["AssumedRoleId"]
    second = assume(client, issuer.sign(), session="a2")["AssumedRoleUser"]["AssumedRoleId"]
    assert first.split(":")[0] == second.split(":")[0]
    nested = assume(client, issuer.sign(), role="path/nested/with-path")
    assert nested["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/with-path/job-1"


@pytest.mark.parametrize(("kid", "alg"), [("rsa", "RS256"), ("rsa", "RS384"), ("rsa", "RS512"),
                                          ("ec256", "ES256"), ("ec384", "ES384"), ("ec521", "ES512")])
def test_accepts_every_documented_algorithm(client: Any, issuer: Issuer, kid: str, alg: str) -> None:
    assert assume(client, issuer.sign(kid=kid, alg=alg))["SubjectFromWebIdentityToken"] == SUB


def _foreign_rsa() -> Any:
    return jwk.RSAKey.generate_key(2048)


# (case, claims overrides, sign kwargs, role, expected code, message regex, HTTP status)
Case = tuple[str, dict[str, Any], dict[str, Any], str, str, str, int]
REJECTED: list[Case] = [
    ("unregistered issuer", {"iss": "https://gitlab.example.com"}, {}, "basic", "InvalidIdentityToken",
     "^No OpenIDConnect provider found in your account for https://gitlab.example.com$", 400),
    ("issuer differs by a trailing slash", {"iss": "{url}/"}, {}, "basic", "InvalidIdentityToken",
     "^No OpenIDConnect provider found in your account for ", 400),
    ("unknown kid", {}, {"kid": "nope", "key": "rsa"}, "basic", "InvalidIdentityToken", f"^{KEY_NOT_FOUND_RE}$", 400),
    ("no kid with several RSA keys published", {}, {"kid": None}, "basic", "InvalidIdentityToken",
     f"^{KEY_NOT_FOUND_RE}$", 400),
    ("signed by another key under a published kid", {}, {"kid": "rsa", "key": "foreign"}, "basic",
     "InvalidIdentityToken", "could not be validated", 400),
    ("RSA key named for an EC algorithm", {}, {"kid": "rsa", "alg": "ES256", "key": "ec256"}, "basic",
     "InvalidIdentityToken", KEY_NOT_FOUND_RE, 400),
    ("PS256 is not a documented algorithm", {}, {"alg": "PS256"}, "basic", "InvalidIdentityToken",
     "could not be validated", 400),
    ("missing aud", {"aud": None}, {}, "basic", "InvalidIdentityToken", "^Missing a required claim: aud$", 400),
    ("aud not a client id", {"aud": "https://sts.example.com"}, {}, "basic", "InvalidIdentityToken",
     "^Incorrect token audience$", 400),
    ("several audiences without azp", {"aud": ["sts.amazonaws.com", "x"]}, {}, "basic", "InvalidIdentityToken",
     "^Incorrect token audience$", 400),
    ("missing exp", {"exp": None}, {}, "basic", "InvalidIdentityToken", "^Missing a required claim: exp$", 400),
    ("missing iat", {"iat": None}, {}, "basic", "InvalidIdentityToken", "^Missing a required claim: iat$", 400),
    ("missing sub", {"sub": None}, {}, "basic", "InvalidIdentityToken", "^Missing a required claim: sub$", 400),
    ("expired", {"exp": "{now-5}"}, {}, "basic", "ExpiredTokenException",
     r"^Token expired: current date/time \d+ must be before the expiration date/time \d+$", 400),
    ("fractional exp", {"exp": "{now+300.5}"}, {}, "basic", "InvalidIdentityToken", "could not be validated", 400),
    ("string iat", {"iat": "{str(now)}"}, {}, "basic", "InvalidIdentityToken", "could not be validated", 400),
    ("iat an hour ahead", {"iat": "{now+3600}"}, {}, "basic", "InvalidIdentityToken", "could not be validated", 400),
    ("nbf an hour ahead", {"nbf": "{now+3600}"}, {}, "basic", "InvalidIdentityToken", "could not be validated", 400),
    ("sub outside the trust policy", {"sub": "system:gitlabawsbinding:team-b:deploy"}, {}, "basic",
     "AccessDenied", "^Not authorized to perform sts:AssumeRoleWithWebIdentity$", 403),
    ("other client id than the policy's aud", {"aud": "other-client"}, {}, "basic", "AccessDenied",
     "^Not authorized", 403),
    ("role trusts another provider", {}, {}, "other-provider", "AccessDenied", "^Not authorized", 403),
    ("role does not exist", {}, {}, "missing", "AccessDenied", "^Not authorized", 403),
    ("explicit Deny wins over Allow", {"sub": "system:gitlabawsbinding:team-a:blocked"}, {}, "deny",
     "AccessDenied", "^Not authorized", 403),
    ("a GitLab claim is no condition key for a custom issuer", {"project_id": "42"}, {}, "gitlab-claim",
     "AccessDenied", "^Not authorized", 403),
    ("tags without sts:TagSession", {TAGS: {"principal_tags": {"ref": ["main"]}}}, {}, "notags", "AccessDenied",
     "^Not authorized", 403),
    ("source identity without sts:SetSourceIdentity", {SOURCE: "alice"}, {}, "notags", "AccessDenied",
     "^Not authorized", 403),
    ("aws:RequestTag condition not met", {TAGS: {"principal_tags": {"environment": ["staging"]}}}, {}, "tagged",
     "AccessDenied", "^Not authorized", 403),
    ("51 session tags", {TAGS: {"principal_tags": {f"k{i}": ["v"] for i in range(51)}}}, {}, "tagged",
     "InvalidIdentityToken", "50 tags", 400),
    ("tag key with aws: prefix", {TAGS: {"principal_tags": {"aws:ref": ["main"]}}}, {}, "tagged",
     "InvalidIdentityToken", "aws:", 400),
    ("tag key of 129 characters", {TAGS: {"principal_tags": {"k" * 129: ["v"]}}}, {}, "tagged",
     "InvalidIdentityToken", "1-128", 400),
    ("tag key with a forbidden character", {TAGS: {"principal_tags": {"a*b": ["v"]}}}, {}, "tagged",
     "InvalidIdentityToken", "1-128", 400),
    ("tag value of 257 characters", {TAGS: {"principal_tags": {"ref": ["v" * 257]}}}, {}, "tagged",
     "InvalidIdentityToken", "256", 400),
    ("tag value as a bare string", {TAGS: {"principal_tags": {"ref": "main"}}}, {}, "tagged",
     "InvalidIdentityToken", "single-element array", 400),
    ("two values for one tag", {TAGS: {"principal_tags": {"ref": ["a", "b"]}}}, {}, "tagged",
     "InvalidIdentityToken", "single-element array", 400),
    ("tag keys equal but for case", {TAGS: {"principal_tags": {"Ref": ["a"], "ref": ["b"]}}}, {}, "tagged",
     "InvalidIdentityToken", "case-insensitive", 400),
    ("transitive key that is no tag", {TAGS: {"principal_tags": {"ref": ["a"]}, "transitive_tag_keys": ["env"]}},
     {}, "tagged", "InvalidIdentityToken", "subset", 400),
    ("source identity of one character", {SOURCE: "a"}, {}, "tagged", "InvalidIdentityToken", "2-64", 400),
    ("source identity with a space", {SOURCE: "alice smith"}, {}, "tagged", "InvalidIdentityToken", "2-64", 400),
]


def _render(value: Any, issuer: Issuer) -> Any:
    if not isinstance(value, str) or not value.startswith("{") or not value.endswith("}"):
        return value.replace("{url}", issuer.url) if isinstance(value, str) else value
    return eval(value[1:-1], {"now": int(time.time()), "str": str})  # noqa: S307 (test table expressions)


@pytest.mark.parametrize("case", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejects_what_aws_rejects(client: Any, issuer: Issuer, case: Case) -> None:
    _, overrides, sign, role, code, message, status = case
    claims = issuer.claims(**{k: _render(v, issuer) for k, v in overrides.items()})
    sign = dict(sign)
    key_name = sign.pop("key", None)
    key = _foreign_rsa() if key_name == "foreign" else issuer.keys[key_name] if key_name else None
    if sign.get("alg") == "PS256":
        key = issuer.keys["rsa"]
    token = issuer.sign(claims, key=key, **sign)
    got_code, got_message, got_status, detail = refusal_with_detail(client, token, role)
    assert (got_code, got_status) == (code, status), got_message
    assert re.search(message, got_message), got_message
    # The AWS message is generic for several causes: the local debugging header says which one fired.
    assert re.search(DETAILS.get(case[0], ""), detail), detail


DETAILS = {
    "unknown kid": "0 usable RSA keys for kid 'nope'",
    "no kid with several RSA keys published": "2 usable RSA keys for kid None",
    "signed by another key under a published kid": "signature check failed",
    "RSA key named for an EC algorithm": "0 usable EC keys for kid 'rsa'",
    "PS256 is not a documented algorithm": "algorithm 'PS256' is not one of",
    "fractional exp": "exp is not an integer",
    "string iat": "iat is not an integer",
    "iat an hour ahead": "iat or nbf is in the future",
    "nbf an hour ahead": "iat or nbf is in the future",
    "sub outside the trust policy": "no Allow statement matched sts:AssumeRoleWithWebIdentity",
    "role does not exist": "no role arn:aws:iam::111122223333:role/missing",
    "explicit Deny wins over Allow": "explicit Deny",
    "tags without sts:TagSession": "no Allow statement matched sts:TagSession",
    "source identity without sts:SetSourceIdentity": "no Allow statement matched sts:SetSourceIdentity",
}


@pytest.mark.parametrize(("role", "claims"), [
    ("tagged", {TAGS: {"principal_tags": {"environment": ["production"], "ref": ["main"]},
                       "transitive_tag_keys": ["ref"]}, SOURCE: "alice@example.com"}),
    ("tagged", {TAGS: {"principal_tags": {"project_path": ["group/ü proj"]}}}),  # IfExists: no environment tag
    ("tagged", {"sub": "system:gitlabawsbinding:team-a:other"}),
    ("wildcard-action", {TAGS: {"principal_tags": {"ref": ["main"]}}, SOURCE: "bob"}),
    ("deny", {"sub": "system:gitlabawsbinding:team-a:allowed"}),
    ("basic", {"aud": ["sts.amazonaws.com", "another"], "azp": "sts.amazonaws.com"}),
])
def test_accepts_what_aws_accepts(client: Any, issuer: Issuer, role: str, claims: dict[str, Any]) -> None:
    response = assume(client, issuer.sign(issuer.claims(**claims)), role)
    assert response["Credentials"]["AccessKeyId"].startswith("ASIA")
    if TAGS in claims:
        assert 0 < response["PackedPolicySize"] <= 100
    if SOURCE in claims:
        assert response["SourceIdentity"] == claims[SOURCE]


def test_token_without_kid_is_accepted_when_exactly_one_key_could_have_signed(
        client: Any, signing_keys: dict[str, Any]) -> None:
    lonely = Issuer(keys={"only": signing_keys["rsa2"]})
    try:
        from gitlab_sts.testing.sts import start_local_sts
        from gitlab_sts.testing.sts_config import parse_config
        from tests.sts.conftest import sts_client, sts_config_for

        with start_local_sts(parse_config(sts_config_for(lonely))) as running:
            token = lonely.sign(lonely.claims(), kid=None, key=signing_keys["rsa2"])
            assert assume(sts_client(running.url), token)["SubjectFromWebIdentityToken"] == SUB
    finally:
        lonely.close()


@pytest.mark.parametrize(("duration", "role", "outcome"), [
    (900, "basic", "ok"), (3600, "basic", "ok"), (3601, "basic", "max"), (43200, "long", "ok"),
])
def test_duration_is_capped_by_the_role(client: Any, issuer: Issuer, duration: int, role: str, outcome: str) -> None:
    if outcome == "ok":
        creds = assume(client, issuer.sign(), role, DurationSeconds=duration)["Credentials"]
        remaining = (creds["Expiration"] - datetime.now(UTC)).total_seconds()
        assert duration - 10 <= remaining <= duration + 1
    else:
        code, message, status = refusal(client, issuer.sign(), role, DurationSeconds=duration)
        assert (code, status) == ("ValidationError", 400)
        assert message == "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."


@pytest.mark.parametrize("session", ["has space", "semi;colon", "slash/no"])
def test_session_name_pattern(client: Any, issuer: Issuer, session: str) -> None:
    with pytest.raises(ClientError) as info:
        assume(client, issuer.sign(), session=session)
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert "Member must satisfy regular expression pattern: [\\w+=,.@-]*" in error["Message"]


def test_session_policy_must_be_json(client: Any, issuer: Issuer) -> None:
    code, message, status = refusal(client, issuer.sign(), Policy="{not json")
    assert (code, status) == ("MalformedPolicyDocument", 400)
    ok = assume(client, issuer.sign(), Policy='{"Version":"2012-10-17","Statement":[]}')
    assert 0 < ok["PackedPolicySize"] <= 100


