"""The platform guard (settings.guard)."""

from __future__ import annotations

import pytest

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.guard import Guard
from gitlab_sts.core.settings import GuardRule

RULES = (
    GuardRule(namespaces=("team-*",), accounts=("123456789012",)),
    GuardRule(namespaces=("platform",), role_arns=("arn:aws:iam::*:role/platform-*",)),
    GuardRule(namespaces=("team-b",), role_arns=("arn:aws:iam::555555555555:role/shared",)),
    GuardRule(namespaces=("free",)),
)


@pytest.mark.parametrize(("namespace", "role", "allowed", "words"), [
    ("team-a", "arn:aws:iam::123456789012:role/x", True, ""),
    ("team-a", "arn:aws:iam::999999999999:role/x", False, "accounts ['123456789012']"),
    ("team-b", "arn:aws:iam::555555555555:role/shared", True, ""),  # a second rule widens
    ("platform", "arn:aws:iam::111111111111:role/platform-ci", True, ""),
    ("platform", "arn:aws:iam::111111111111:role/app", False, "roles"),
    ("platform", "arn:aws:iam::111111111111:role/platform-ci/nested", False, ""),  # * stays in a segment
    ("free", "arn:aws:iam::111111111111:role/anything", True, ""),
    ("elsewhere", "arn:aws:iam::123456789012:role/x", False, "not covered"),
])
def test_guard(namespace: str, role: str, allowed: bool, words: str) -> None:
    problem = Guard(RULES).problem(namespace, role)
    assert (problem is None) == allowed
    if not allowed:
        assert problem is not None and words in problem and namespace in problem


def test_no_rules_allow_everything() -> None:
    assert not Guard(())
    assert Guard(()).problem("any", "arn:aws:iam::123456789012:role/x") is None


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"guard\[0\]\.namespaces"):
        Guard((GuardRule(namespaces=("",)),))
