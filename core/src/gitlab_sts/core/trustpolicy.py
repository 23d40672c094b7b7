"""The IAM trust policy a role needs so that a binding's minted tokens can assume it."""

from __future__ import annotations

from typing import Any

from gitlab_sts.core.bindings import CompiledBinding

ASSUME = "sts:AssumeRoleWithWebIdentity"
TAG_SESSION = "sts:TagSession"
SET_SOURCE_IDENTITY = "sts:SetSourceIdentity"


def provider_host(issuer: str) -> str:
    """The IAM OIDC provider URL: the issuer without its https:// scheme (a path stays)."""
    for scheme in ("https://", "http://"):
        if issuer.startswith(scheme):
            return issuer[len(scheme):]
    return issuer


def provider_arn(role_arn: str, issuer: str) -> str:
    """arn:<partition>:iam::<account of the role>:oidc-provider/<issuer host[/path]>."""
    parts = role_arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "iam":
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    partition, account = parts[1], parts[4]
    return f"arn:{partition}:iam::{account}:oidc-provider/{provider_host(issuer)}"


def trust_policy(binding: CompiledBinding, issuer: str, default_audience: str) -> dict[str, Any]:
    """The exact trust policy JSON for the binding's role: Federated principal, actions, aud/sub condition."""
    aws = binding.spec.aws
    host = provider_host(issuer)
    actions = [ASSUME]
    if aws.session_tags:
        actions.append(TAG_SESSION)  # AWS refuses session tags unless the trust policy allows tagging
    if aws.source_identity:
        actions.append(SET_SOURCE_IDENTITY)
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn(aws.role_arn, issuer)},
            "Action": actions,
            "Condition": {"StringEquals": {
                f"{host}:aud": aws.audience or default_audience,
                f"{host}:sub": binding.subject,
            }},
        }],
    }
