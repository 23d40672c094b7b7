"""Claim types exactly as GitLab emits them; anything else is refused."""

from __future__ import annotations

from typing import Any

import pytest

from gitlab_sts.core.claims import ACCESS_LEVELS, check_types
from gitlab_sts.core.errors import InvalidRequest
from tests.core.conftest import DROP, gitlab_claims


def test_gitlab_shaped_claims_pass() -> None:
    check_types(gitlab_claims())


def test_access_levels_are_ordered_lowest_first() -> None:
    assert ACCESS_LEVELS == ("guest", "planner", "reporter", "developer", "maintainer", "owner")


@pytest.mark.parametrize("overrides", [
    {"user_access_level": None},
    {"ci_config_ref_uri": None, "ci_config_sha": None},
    {"environment": DROP, "environment_protected": DROP, "deployment_tier": DROP, "environment_action": DROP},
    {"runner_id": DROP, "runner_environment": DROP, "nbf": DROP},
    {"ref_type": "tag", "ref": "v1.2.3", "ref_protected": "false"},
    {"runner_id": 0},
    {"aud": ["https://sts.example.com", "other"]},
    {"user_identities": [{"provider": "ldap", "extern_uid": "x"}], "groups_direct": ["platform"]},
    {"some_future_claim": {"nested": True}},
], ids=["null-access-level", "null-config-ref", "no-environment", "no-runner-or-nbf", "tag", "runner-zero",
        "list-aud", "extra-arrays", "unknown-claim"])
def test_accepted_variants(overrides: dict[str, Any]) -> None:
    check_types(gitlab_claims(**overrides))


@pytest.mark.parametrize(("overrides", "words"), [
    ({"ref_protected": True}, "'ref_protected' must be a string"),
    ({"ref_protected": "True"}, "'ref_protected' must be \"true\" or \"false\""),
    ({"ref_protected": "yes"}, "'ref_protected' must be \"true\" or \"false\""),
    ({"environment_protected": False}, "'environment_protected' must be a string"),
    ({"environment_protected": "1"}, "'environment_protected' must be \"true\" or \"false\""),
    ({"project_id": 42}, "'project_id' must be a string"),
    ({"project_id": "4a2"}, "'project_id' must be a string of digits"),
    ({"project_id": ""}, "'project_id' must be a string of digits"),
    ({"project_id": "-42"}, "'project_id' must be a string of digits"),
    ({"project_id": "\u0664\u0662"}, "'project_id' must be a string of digits"),
    ({"project_id": "\u00b2"}, "'project_id' must be a string of digits"),
    ({"namespace_id": 72}, "'namespace_id' must be a string"),
    ({"job_id": 302.0}, "'job_id' must be a string"),
    ({"pipeline_id": None}, "'pipeline_id' must be a string"),
    ({"user_id": "7 "}, "'user_id' must be a string of digits"),
    ({"runner_id": "12"}, "'runner_id' must be an integer"),
    ({"runner_id": True}, "'runner_id' must be an integer"),
    ({"runner_id": 12.0}, "'runner_id' must be an integer"),
    ({"runner_id": None}, "'runner_id' must be an integer"),
    ({"ref_type": "branches"}, "'ref_type' must be \"branch\" or \"tag\""),
    ({"ref_type": "Branch"}, "'ref_type' must be \"branch\" or \"tag\""),
    ({"user_access_level": "admin"}, "not a known GitLab role"),
    ({"user_access_level": "Maintainer"}, "not a known GitLab role"),
    ({"user_access_level": 40}, "'user_access_level' must be a string"),
    ({"exp": 1_800_000_300.0}, "'exp' must be an integer"),
    ({"exp": "1800000300"}, "'exp' must be an integer"),
    ({"exp": True}, "'exp' must be an integer"),
    ({"iat": None}, "'iat' must be an integer"),
    ({"nbf": 1.5}, "'nbf' must be an integer"),
    ({"iat": -5}, "'iat' is not a plausible time"),
    ({"nbf": 0}, "'nbf' is not a plausible time"),
    ({"exp": 2**53}, "'exp' is not a plausible time"),
    ({"exp": int("9" * 400)}, "'exp' is not a plausible time"),
    ({"ref": ["main"]}, "'ref' must be a string"),
    ({"project_path": None}, "'project_path' must be a string"),
    ({"sub": 1}, "'sub' must be a string"),
    ({"environment": None}, "'environment' must be a string"),
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_wrong_types_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_types(gitlab_claims(**overrides))
    assert words in exc.value.description
    assert exc.value.reason == "claim_type"


@pytest.mark.parametrize("missing", ["iss", "sub", "aud", "exp", "iat", "project_id", "project_path",
                                     "namespace_path", "job_id", "pipeline_id", "ref", "ref_type"])
def test_missing_required_claim_refused(missing: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_types(gitlab_claims(**{missing: DROP}))
    assert exc.value.reason == "missing_claim"
    assert missing in exc.value.description


def test_all_missing_claims_are_listed_together() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_types({"iss": "x"})
    assert "sub, aud, exp, iat, project_id" in exc.value.description
