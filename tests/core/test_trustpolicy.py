"""The IAM trust policy builder."""

from __future__ import annotations

from typing import Any

import pytest

from gitlab_sts.core.bindings import compile_binding
from gitlab_sts.core.trustpolicy import provider_arn, provider_host, trust_policy

ROLE = "arn:aws:iam::123456789012:role/deploy"


def _spec(**aws: Any) -> dict[str, Any]:
    return {"project": {"path": "g/p"}, "aws": {"roleArn": ROLE, **aws}}


@pytest.mark.parametrize(("issuer", "host"), [
    ("https://sts.example.com", "sts.example.com"),
    ("https://example.com/gitlab-sts", "example.com/gitlab-sts"),
    ("http://127.0.0.1:8080", "127.0.0.1:8080"),
])
def test_provider_host(issuer: str, host: str) -> None:
    assert provider_host(issuer) == host


def test_provider_arn_uses_role_account_and_partition() -> None:
    assert provider_arn(ROLE, "https://sts.example.com") == \
        "arn:aws:iam::123456789012:oidc-provider/sts.example.com"
    assert provider_arn("arn:aws-cn:iam::111122223333:role/x", "https://s.example") == \
        "arn:aws-cn:iam::111122223333:oidc-provider/s.example"
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        provider_arn("nope", "https://s.example")


@pytest.mark.parametrize(("aws", "actions", "aud"), [
    ({}, ["sts:AssumeRoleWithWebIdentity"], "sts.amazonaws.com"),
    ({"sessionTags": ["ref"]}, ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"], "sts.amazonaws.com"),
    ({"sourceIdentity": "user_login"}, ["sts:AssumeRoleWithWebIdentity", "sts:SetSourceIdentity"],
     "sts.amazonaws.com"),
    ({"sessionTags": ["ref"], "sourceIdentity": "user_login", "audience": "custom"},
     ["sts:AssumeRoleWithWebIdentity", "sts:TagSession", "sts:SetSourceIdentity"], "custom"),
])
def test_trust_policy(aws: dict[str, Any], actions: list[str], aud: str) -> None:
    binding = compile_binding("team-a", "deploy", _spec(**aws))
    assert trust_policy(binding, "https://sts.example.com", "sts.amazonaws.com") == {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/sts.example.com"},
            "Action": actions,
            "Condition": {"StringEquals": {
                "sts.example.com:aud": aud,
                "sts.example.com:sub": "system:gitlabawsbinding:team-a:deploy",
            }},
        }],
    }
