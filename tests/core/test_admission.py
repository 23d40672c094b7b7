"""core.admission: the issuer rule and the guard, written once, applied by the operator and at minting."""

from __future__ import annotations

import pytest

from gitlab_sts.core import admission
from gitlab_sts.core.admission import FORBIDDEN, UNTRUSTED_ISSUER, Admission
from gitlab_sts.core.bindings import BindingIndex
from gitlab_sts.core.errors import InvalidTarget
from gitlab_sts.core.exchange import ExchangeRequest, decide, explain
from gitlab_sts.core.guard import Guard
from gitlab_sts.core.settings import GuardRule, Settings, parse_settings
from gitlab_sts.core.verify import VerifiedToken
from tests.core.conftest import GITLAB, ROLE, SETTINGS_YAML, compile_spec, gitlab_claims

OTHER_ACCOUNT_ROLE = "arn:aws:iam::210987654321:role/x"


@pytest.mark.parametrize(("trusted", "issuer", "reason", "words"), [
    ((GITLAB,), None, None, ""),
    ((GITLAB,), GITLAB, None, ""),
    ((GITLAB,), "https://other.example", UNTRUSTED_ISSUER, "is not a GitLab instance the settings trust"),
    ((GITLAB, "https://b.example"), None, UNTRUSTED_ISSUER, "required because the settings trust 2"),
    ((GITLAB, "https://b.example"), "https://b.example", None, ""),
])
def test_issuer_rule(trusted: tuple[str, ...], issuer: str | None, reason: str | None, words: str) -> None:
    refusal = Admission(trusted, Guard(())).check("team-a", issuer, ROLE)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert refusal.message.startswith("spec.issuer: ") and words in refusal.message


def test_guard_rule() -> None:
    rules = Admission((GITLAB,), Guard((GuardRule(namespaces=("team-*",), accounts=("123456789012",)),)))
    assert rules.check("team-a", None, ROLE) is None
    refusal = rules.check("team-a", None, OTHER_ACCOUNT_ROLE)
    assert refusal is not None and refusal.reason == FORBIDDEN and refusal.message.startswith("spec.aws.roleArn: ")
    refusal = rules.check("elsewhere", None, ROLE)
    assert refusal is not None and "not covered" in refusal.message


def guarded(settings_yaml: str = SETTINGS_YAML) -> Settings:
    return parse_settings(settings_yaml + "guard:\n  - namespaces: [other-team]\n")


def test_for_settings_compiles_once_per_settings_object() -> None:
    a, b = guarded(), guarded()
    assert admission.for_settings(a) is admission.for_settings(a)
    assert admission.for_settings(b) is not admission.for_settings(a)


def test_the_mint_path_refuses_a_binding_the_guard_forbids_even_when_indexed() -> None:
    """A binding loaded by any path (here: put in the index directly) cannot mint what the guard forbids."""
    binding = compile_spec("deploy", rules={"refs": ["main"]})
    index = BindingIndex([binding], default_issuer=GITLAB)
    open_settings = parse_settings(SETTINGS_YAML)
    token = VerifiedToken(instance=open_settings.gitlab[0], claims=gitlab_claims(), kid="gitlab-ci")
    assert decide(token, index, open_settings, ExchangeRequest("a.b.c")).binding is binding
    tight = guarded()
    with pytest.raises(InvalidTarget) as caught:
        decide(token, index, tight, ExchangeRequest("a.b.c"))
    assert "namespace team-a is not covered by any platform guard rule" in caught.value.description
    assert "(settings guard)" in caught.value.description
    rows = explain(token, index, tight)
    assert rows[0]["matches"] is False and rows[0]["failed"]["rule"] == "settings"
