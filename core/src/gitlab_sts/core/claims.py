"""GitLab ID token claims: their types as GitLab emits them, checked strictly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gitlab_sts.core.errors import InvalidRequest

# Lowest to highest; user_access_level is one of these names (GitLab 16.9+).
ACCESS_LEVELS = ("guest", "planner", "reporter", "developer", "maintainer", "owner")

# GitLab renders ids and booleans as strings (Ruby `to_s`); these must be strings when present.
STRING_CLAIMS = (
    "sub", "jti", "namespace_id", "namespace_path", "project_id", "project_path",
    "user_id", "user_login", "user_email", "pipeline_id", "pipeline_source", "job_id",
    "ref", "ref_type", "ref_path", "ref_protected", "environment", "environment_protected",
    "deployment_tier", "environment_action", "runner_environment", "sha", "project_visibility",
    "job_namespace_id", "job_namespace_path", "job_project_id", "job_project_path", "job_source",
    "ci_config_ref_uri", "ci_config_sha", "user_access_level",
)
# Claims that may be JSON null in GitLab's tokens.
NULLABLE_CLAIMS = frozenset({"user_access_level", "ci_config_ref_uri", "ci_config_sha"})
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "project_id", "project_path",
                   "namespace_path", "job_id", "pipeline_id", "ref", "ref_type")
BOOLEAN_STRING_CLAIMS = ("ref_protected", "environment_protected")
DIGIT_STRING_CLAIMS = ("project_id", "namespace_id", "job_id", "pipeline_id", "user_id")
NUMERIC_DATE_CLAIMS = ("exp", "iat", "nbf")
# Largest accepted exp/iat/nbf (2^53, JSON's safe integer range; about 285 million years).
MAX_NUMERIC_DATE = 2**53


# Every claim GitLab puts in an ID token (docs and lib/gitlab/ci/jwt*.rb, up to 18.9), standard ones included.
GITLAB_CLAIMS = frozenset({
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti",
    "namespace_id", "namespace_path", "project_id", "project_path", "job_namespace_id", "job_namespace_path",
    "job_project_id", "job_project_path", "user_id", "user_login", "user_email", "user_access_level",
    "user_identities", "pipeline_id", "pipeline_source", "job_id", "ref", "ref_type", "ref_path", "ref_protected",
    "groups_direct", "environment", "environment_protected", "deployment_tier", "environment_action", "runner_id",
    "runner_environment", "sha", "ci_config_ref_uri", "ci_config_sha", "project_visibility", "job_source",
    "job_config",
})


def unknown_claim_warnings(session_tags: Sequence[str], source_identity: str | None) -> list[str]:
    """Warnings for session tags or a source identity naming a claim GitLab never sends (always empty)."""
    out = [f"aws.sessionTags: {name!r} is not a claim GitLab sends, so the tag is always empty"
           for name in session_tags if name not in GITLAB_CLAIMS]
    if source_identity is not None and source_identity not in GITLAB_CLAIMS:
        out.append(f"aws.sourceIdentity: {source_identity!r} is not a claim GitLab sends")
    return out


def check_types(claims: Mapping[str, Any]) -> None:
    """Refuse claims whose type differs from what GitLab emits."""
    missing = [c for c in REQUIRED_CLAIMS if c not in claims]
    if missing:
        raise InvalidRequest(
            f"the GitLab token lacks required claims: {', '.join(missing)}", reason="missing_claim"
        )
    for name in STRING_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if value is None and name in NULLABLE_CLAIMS:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(
                f"claim {name!r} must be a string as GitLab emits it, got {type(value).__name__}",
                reason="claim_type",
            )
    for name in BOOLEAN_STRING_CLAIMS:
        if name in claims and claims[name] not in ("true", "false"):
            raise InvalidRequest(f"claim {name!r} must be \"true\" or \"false\"", reason="claim_type")
    for name in DIGIT_STRING_CLAIMS:
        # str.isdigit() also accepts non-ASCII digits such as "\u0664\u0662" or "\u00b2": require 0-9 only.
        if name in claims and not (str(claims[name]).isascii() and str(claims[name]).isdigit()):
            raise InvalidRequest(f"claim {name!r} must be a string of digits", reason="claim_type")
    if "runner_id" in claims and (
        isinstance(claims["runner_id"], bool) or not isinstance(claims["runner_id"], int)
    ):
        raise InvalidRequest("claim 'runner_id' must be an integer", reason="claim_type")
    if "ref_type" in claims and claims["ref_type"] not in ("branch", "tag"):
        raise InvalidRequest("claim 'ref_type' must be \"branch\" or \"tag\"", reason="claim_type")
    level = claims.get("user_access_level")
    if level is not None and level not in ACCESS_LEVELS:
        raise InvalidRequest("claim 'user_access_level' is not a known GitLab role", reason="claim_type")
    for name in NUMERIC_DATE_CLAIMS:
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"claim {name!r} must be an integer", reason="claim_type")
        # A NumericDate outside 1970..2^53 s is no real time: a negative iat or a 400-digit exp would
        # otherwise pass the time comparisons (the latter as a token that never expires).
        if not 0 < value < MAX_NUMERIC_DATE:
            raise InvalidRequest(f"claim {name!r} is not a plausible time", reason="claim_type")
