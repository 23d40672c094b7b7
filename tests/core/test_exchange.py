"""The RFC 8693 form and the exchange decision: one match, none (and why), several, filters."""

from __future__ import annotations

from typing import Any

import pytest

from gitlab_sts.core.bindings import BindingIndex, CompiledBinding
from gitlab_sts.core.errors import InvalidRequest, InvalidTarget, UnsupportedGrantType
from gitlab_sts.core.exchange import (
    GRANT_TYPE,
    ISSUED_TOKEN_TYPE,
    TOKEN_TYPES,
    ExchangeRequest,
    decide,
    explain,
    parse_form,
)
from gitlab_sts.core.settings import Settings
from gitlab_sts.core.verify import VerifiedToken
from tests.core.conftest import DROP, GITLAB, ROLE, ROLE_B, compile_spec, gitlab_claims

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def form(**fields: Any) -> dict[str, list[str]]:
    values: dict[str, Any] = {"grant_type": GRANT_TYPE, "subject_token": "a.b.c", "subject_token_type": JWT_TYPE}
    values.update(fields)
    return {k: (v if isinstance(v, list) else [v]) for k, v in values.items() if v is not DROP}


def test_token_types() -> None:
    assert TOKEN_TYPES == ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
    assert ISSUED_TOKEN_TYPE == JWT_TYPE


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, ExchangeRequest("a.b.c")),
    ({"subject_token_type": TOKEN_TYPES[1]}, ExchangeRequest("a.b.c")),
    ({"resource": ROLE}, ExchangeRequest("a.b.c", resource=ROLE)),
    ({"audience": "sts.amazonaws.com"}, ExchangeRequest("a.b.c", audience="sts.amazonaws.com")),
    ({"subject_token": "  a.b.c\n"}, ExchangeRequest("a.b.c")),
    ({"scope": "ignored", "requested_token_type": JWT_TYPE}, ExchangeRequest("a.b.c")),
], ids=["minimal", "id-token-type", "resource", "audience", "whitespace", "extra-fields"])
def test_good_forms(fields: dict[str, Any], expected: ExchangeRequest) -> None:
    assert parse_form(form(**fields)) == expected


@pytest.mark.parametrize(("fields", "error", "words"), [
    ({"grant_type": DROP}, InvalidRequest, "missing grant_type"),
    ({"grant_type": "client_credentials"}, UnsupportedGrantType, "grant_type must be"),
    ({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}, UnsupportedGrantType, "grant_type must be"),
    ({"grant_type": ""}, UnsupportedGrantType, "grant_type must be"),
    ({"grant_type": [GRANT_TYPE, GRANT_TYPE]}, InvalidRequest, "'grant_type' must be given once"),
    ({"subject_token": DROP}, InvalidRequest, "missing subject_token"),
    ({"subject_token": ""}, InvalidRequest, "missing subject_token"),
    ({"subject_token": ["a.b.c", "d.e.f"]}, InvalidRequest, "'subject_token' must be given once"),
    ({"subject_token_type": DROP}, InvalidRequest, "subject_token_type must be one of"),
    ({"subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}, InvalidRequest,
     "subject_token_type must be one of"),
    ({"resource": [ROLE, ROLE_B]}, InvalidRequest, "'resource' must be given once"),
    ({"resource": ""}, InvalidRequest, "'resource' must be 1-2048"),
    ({"audience": "x" * 2049}, InvalidRequest, "'audience' must be 1-2048"),
    ({"actor_token": "a.b.c"}, InvalidRequest, "actor tokens are not supported"),
    ({"actor_token": ""}, InvalidRequest, "actor tokens are not supported"),
    ({"actor_token_type": JWT_TYPE}, InvalidRequest, "actor tokens are not supported"),
], ids=["no-grant-type", "client-credentials", "jwt-bearer", "empty-grant-type", "repeated-grant-type",
        "no-subject-token", "empty-subject-token", "repeated-subject-token", "no-token-type", "access-token-type",
        "repeated-resource", "empty-resource", "long-audience", "actor-token", "empty-actor-token",
        "actor-token-type"])
def test_bad_forms(fields: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as exc:
        parse_form(form(**fields))
    assert type(exc.value) is error
    assert words in str(exc.value)


def test_unsupported_grant_type_body() -> None:
    with pytest.raises(UnsupportedGrantType) as exc:
        parse_form(form(grant_type="password"))
    assert exc.value.body()["error"] == "unsupported_grant_type"
    assert exc.value.status == 400


# ---------------------------------------------------------------- decide / explain


def verified(settings: Settings, **claims: Any) -> VerifiedToken:
    return VerifiedToken(instance=settings.gitlab[0], claims=gitlab_claims(**claims), kid="gitlab-ci")


def index(*bindings: CompiledBinding) -> BindingIndex:
    return BindingIndex(bindings, default_issuer=GITLAB)


REQ = ExchangeRequest("a.b.c")


def test_one_match(settings: Settings) -> None:
    deploy = compile_spec("deploy", rules={"refs": ["main"]}, aws={"sessionTags": ["ref"]})
    other = compile_spec("release", rules={"refs": ["release/*"]}, aws={"roleArn": ROLE_B})
    decision = decide(verified(settings), index(deploy, other), settings, REQ)
    assert decision.binding is deploy
    assert decision.grant.role_arn == ROLE
    assert decision.grant.subject == "system:gitlabawsbinding:team-a:deploy"
    assert decision.grant.audience == "sts.amazonaws.com"
    assert decision.grant.lifetime == 900
    assert decision.grant.tags == {"ref": "main"}


def test_no_binding_for_the_project(settings: Settings) -> None:
    elsewhere = compile_spec("secret-binding", "team-z", project={"path": "other/project"},
                             aws={"roleArn": "arn:aws:iam::999999999999:role/secret"})
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings), index(elsewhere), settings, REQ)
    assert exc.value.reason == "no_binding"
    assert "platform/payments (id 42)" in exc.value.description
    body = str(exc.value.body())
    assert "secret" not in body and "999999999999" not in body and "team-z" not in body
    assert exc.value.status == 403


def test_no_match_says_binding_rule_claim_expected_actual(settings: Settings) -> None:
    deploy = compile_spec("deploy", rules={"refs": ["main"], "protectedRef": True})
    tags_only = compile_spec("tags-only", rules={"refType": "tag"}, aws={"roleArn": ROLE_B})
    elsewhere = compile_spec("secret-binding", "team-z", project={"path": "other/project"},
                             aws={"roleArn": "arn:aws:iam::999999999999:role/secret"})
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings, ref="feature/x"), index(deploy, tags_only, elsewhere), settings, REQ)
    error = exc.value
    assert error.reason == "rule_failed"
    text = error.description
    for piece in ("team-a/deploy", "rules.refs", "claim ref", "'feature/x'", "main",
                  "team-a/tags-only", "rules.refType", "ref_type", "'branch'", "tag"):
        assert piece in text, piece
    body = str(error.body())
    assert "secret" not in body and "999999999999" not in body and "team-z" not in body
    tried = error.details["bindings_tried"]
    assert tried == [
        {"binding": "team-a/deploy", "role_arn": ROLE, "rule": "rules.refs", "claim": "ref",
         "expected": "one of ['main']", "actual": "feature/x"},
        {"binding": "team-a/tags-only", "role_arn": ROLE_B, "rule": "rules.refType", "claim": "ref_type",
         "expected": "tag", "actual": "branch"},
    ]


def test_several_match_is_ambiguous(settings: Settings) -> None:
    a = compile_spec("deploy", rules={"refs": ["main"]})
    b = compile_spec("read", project={"namespace": "platform"}, aws={"roleArn": ROLE_B})
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings), index(a, b), settings, REQ)
    assert exc.value.reason == "ambiguous"
    assert ROLE in exc.value.description and ROLE_B in exc.value.description
    assert "resource" in exc.value.description
    assert exc.value.details["candidates"] == [{"binding": "team-a/deploy", "role_arn": ROLE},
                                               {"binding": "team-a/read", "role_arn": ROLE_B}]


@pytest.mark.parametrize(("resource", "chosen"), [(ROLE, "deploy"), (ROLE_B, "read")])
def test_resource_narrows(settings: Settings, resource: str, chosen: str) -> None:
    a = compile_spec("deploy")
    b = compile_spec("read", aws={"roleArn": ROLE_B})
    decision = decide(verified(settings), index(a, b), settings, ExchangeRequest("t", resource=resource))
    assert decision.binding.name == chosen
    assert decision.grant.role_arn == resource


def test_resource_matching_no_binding(settings: Settings) -> None:
    a = compile_spec("deploy")
    other_role = "arn:aws:iam::123456789012:role/nope"
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings), index(a), settings, ExchangeRequest("t", resource=other_role))
    assert exc.value.reason == "rule_failed"
    assert exc.value.details["bindings_tried"][0]["rule"] == "resource"
    assert other_role in exc.value.description


def test_resource_does_not_rescue_a_failing_binding(settings: Settings) -> None:
    a = compile_spec("deploy", rules={"refs": ["release/*"]})
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings), index(a), settings, ExchangeRequest("t", resource=ROLE))
    assert exc.value.details["bindings_tried"][0]["rule"] == "rules.refs"


@pytest.mark.parametrize(("requested", "chosen"), [
    ("sts.amazonaws.com", "default-aud"),
    ("https://custom.example.com", "custom-aud"),
    (None, None),
    ("other", "none"),
], ids=["default", "custom", "no-filter-ambiguous", "unknown"])
def test_audience_filter(settings: Settings, requested: str | None, chosen: str | None) -> None:
    default_aud = compile_spec("default-aud")
    custom_aud = compile_spec("custom-aud", aws={"audience": "https://custom.example.com", "roleArn": ROLE_B})
    request = ExchangeRequest("t", audience=requested)
    if chosen in ("default-aud", "custom-aud"):
        decision = decide(verified(settings), index(default_aud, custom_aud), settings, request)
        assert decision.binding.name == chosen
        assert decision.grant.audience == (requested or "")
    else:
        with pytest.raises(InvalidTarget) as exc:
            decide(verified(settings), index(default_aud, custom_aud), settings, request)
        assert exc.value.reason == ("ambiguous" if chosen is None else "rule_failed")


def test_grant_failure_counts_as_no_match(settings: Settings) -> None:
    # A binding whose source identity cannot be built does not match; the other one is then unambiguous.
    needs_identity = compile_spec("with-identity", aws={"sourceIdentity": "user_login"})
    plain = compile_spec("plain", aws={"roleArn": ROLE_B})
    decision = decide(verified(settings, user_login="x"), index(needs_identity, plain), settings, REQ)
    assert decision.binding.name == "plain"
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings, user_login="x"), index(needs_identity), settings, REQ)
    assert "aws.sourceIdentity" in exc.value.description


def test_binding_of_another_issuer_is_not_a_candidate(settings: Settings) -> None:
    there = compile_spec("there", issuer="https://gitlab.other.example.com")
    with pytest.raises(InvalidTarget) as exc:
        decide(verified(settings), index(there), settings, REQ)
    assert exc.value.reason == "no_binding"


def test_explain(settings: Settings) -> None:
    ok = compile_spec("deploy", rules={"refs": ["main"]}, aws={"sessionTags": ["ref"], "tokenLifetimeSeconds": 600})
    fails = compile_spec("release", rules={"refs": ["release/*"]}, aws={"roleArn": ROLE_B})
    identity = compile_spec("identity", aws={"sourceIdentity": "user_login"})
    elsewhere = compile_spec("elsewhere", "team-z", project={"path": "other/project"})
    rows = explain(verified(settings, user_login="x"), index(ok, fails, identity, elsewhere), settings)
    by_name = {r["binding"]: r for r in rows}
    assert list(by_name) == ["team-a/deploy", "team-a/identity", "team-a/release"]
    assert by_name["team-a/deploy"] == {
        "binding": "team-a/deploy", "role_arn": ROLE, "subject": "system:gitlabawsbinding:team-a:deploy",
        "matches": True, "audience": "sts.amazonaws.com", "lifetime": 600, "session_tags": {"ref": "main"},
        "source_identity": None,
    }
    release = by_name["team-a/release"]
    assert release["matches"] is False
    assert release["failed"] == {"rule": "rules.refs", "claim": "ref", "expected": "one of ['release/*']",
                                 "actual": "main"}
    assert "rules.refs" in release["reason"] and "'main'" in release["reason"]
    assert by_name["team-a/identity"]["failed"]["rule"] == "aws.sourceIdentity"


def test_explain_with_no_bindings(settings: Settings) -> None:
    assert explain(verified(settings), index(), settings) == []
