"""GitLabAWSBinding: every rule, every compile error, grants, and the per-project index."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gitlab_sts.core.bindings import (
    API_VERSION,
    KIND,
    BindingIndex,
    Grant,
    RuleFailure,
    compile_binding,
    compile_manifest,
    subject_for,
)
from gitlab_sts.core.claims import ACCESS_LEVELS
from gitlab_sts.core.errors import CompileError
from tests.core.conftest import DROP, GITLAB, ROLE, base_spec, compile_spec, gitlab_claims

# ---------------------------------------------------------------- project selectors


@pytest.mark.parametrize(("project", "claims", "ok"), [
    ({"path": "platform/payments"}, {}, True),
    ({"path": "Platform/Payments"}, {}, True),
    ({"path": "platform/payments"}, {"project_path": "PLATFORM/payments"}, True),
    ({"path": "platform/payments"}, {"project_path": "platform/payments-old"}, False),
    ({"path": "platform/payments"}, {"project_path": "platform"}, False),
    ({"path": "platform/payments"}, {"project_path": "other/platform/payments"}, False),
    ({"path": "platform/payments"}, {"project_path": DROP}, False),
    ({"id": "42"}, {}, True),
    ({"id": "42"}, {"project_id": "420"}, False),
    ({"id": "42"}, {"project_id": "4"}, False),
    ({"id": "42"}, {"project_id": "042"}, False),
    ({"id": "42"}, {"project_id": 42}, False),
    ({"id": "42"}, {"project_path": "renamed/elsewhere"}, True),
    ({"namespace": "platform"}, {}, True),
    ({"namespace": "platform"}, {"project_path": "platform/sub/deep/payments"}, True),
    ({"namespace": "platform/sub"}, {"project_path": "platform/sub/deep/payments"}, True),
    ({"namespace": "PLATFORM"}, {}, True),
    ({"namespace": "platform/"}, {}, True),
    ({"namespace": "platform"}, {"project_path": "platformx/payments"}, False),
    ({"namespace": "platform"}, {"project_path": "platform"}, False),
    ({"namespace": "platform/payments"}, {}, False),
    ({"namespace": "platform/sub"}, {"project_path": "platform/subway/x"}, False),
], ids=["path", "path-case-in-binding", "path-case-in-claim", "path-suffix", "path-prefix", "path-nested",
        "path-missing", "id", "id-longer", "id-shorter", "id-leading-zero", "id-int", "id-survives-rename",
        "namespace", "namespace-subgroups", "subgroup-namespace", "namespace-case", "namespace-trailing-slash",
        "namespace-prefix-of-name", "namespace-itself", "namespace-is-the-project", "subgroup-prefix-of-name"])
def test_project_selector(project: dict[str, str], claims: dict[str, Any], ok: bool) -> None:
    binding = compile_spec(project=project)
    failure = binding.evaluate(gitlab_claims(**claims))
    assert (failure is None) is ok
    # The index finds a binding for exactly the tokens its project check accepts (one rule: project_keys).
    assert (binding in BindingIndex([binding], default_issuer=GITLAB).for_token(GITLAB, gitlab_claims(**claims))) is ok
    if failure is not None:
        assert failure.rule == "project." + next(iter(project))
        assert failure.claim in ("project_path", "project_id")


# ---------------------------------------------------------------- rules

RULE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None, str]] = [
    # id, rules, claim overrides, failed rule (None = matches), claim the failure names
    ("refs-exact", {"refs": ["main"]}, {}, None, "ref"),
    ("refs-anchored", {"refs": ["main"]}, {"ref": "main-hack"}, "rules.refs", "ref"),
    ("refs-anchored-left", {"refs": ["main"]}, {"ref": "not-main"}, "rules.refs", "ref"),
    ("refs-second-pattern", {"refs": ["main", "release/*"]}, {"ref": "release/1.0"}, None, "ref"),
    ("refs-star-one-segment", {"refs": ["release/*"]}, {"ref": "release/1.0/x"}, "rules.refs", "ref"),
    ("refs-double-star", {"refs": ["release/**"]}, {"ref": "release/1.0/x"}, None, "ref"),
    ("refs-case", {"refs": ["main"]}, {"ref": "MAIN"}, "rules.refs", "ref"),
    ("refs-missing-claim", {"refs": ["**"]}, {"ref": DROP}, "rules.refs", "ref"),
    ("refType-branch", {"refType": "branch"}, {}, None, "ref_type"),
    ("refType-tag-vs-branch", {"refType": "tag"}, {}, "rules.refType", "ref_type"),
    ("refType-tag", {"refType": "tag"}, {"ref_type": "tag"}, None, "ref_type"),
    ("protectedRef-true", {"protectedRef": True}, {}, None, "ref_protected"),
    ("protectedRef-unprotected", {"protectedRef": True}, {"ref_protected": "false"}, "rules.protectedRef",
     "ref_protected"),
    ("protectedRef-bool-claim", {"protectedRef": True}, {"ref_protected": True}, "rules.protectedRef",
     "ref_protected"),
    ("protectedRef-missing", {"protectedRef": True}, {"ref_protected": DROP}, "rules.protectedRef", "ref_protected"),
    ("protectedRef-false-wanted", {"protectedRef": False}, {"ref_protected": "false"}, None, "ref_protected"),
    ("protectedRef-false-vs-true", {"protectedRef": False}, {}, "rules.protectedRef", "ref_protected"),
    ("environments", {"environments": ["production"]}, {}, None, "environment"),
    ("environments-glob", {"environments": ["review/*"]}, {"environment": "review/feat-1"}, None, "environment"),
    ("environments-anchored", {"environments": ["prod"]}, {"environment": "production"}, "rules.environments",
     "environment"),
    ("environments-none", {"environments": ["**"]}, {"environment": DROP}, "rules.environments", "environment"),
    ("protectedEnvironment", {"protectedEnvironment": True}, {}, None, "environment_protected"),
    ("protectedEnvironment-no", {"protectedEnvironment": True}, {"environment_protected": "false"},
     "rules.protectedEnvironment", "environment_protected"),
    ("protectedEnvironment-no-env", {"protectedEnvironment": True}, {"environment_protected": DROP},
     "rules.protectedEnvironment", "environment_protected"),
    ("env-and-protection", {"environments": ["production"], "protectedEnvironment": True},
     {"environment_protected": "false"}, "rules.protectedEnvironment", "environment_protected"),
    ("pipelineSources", {"pipelineSources": ["push", "web"]}, {"pipeline_source": "web"}, None, "pipeline_source"),
    ("pipelineSources-mr", {"pipelineSources": ["push", "web"]}, {"pipeline_source": "merge_request_event"},
     "rules.pipelineSources", "pipeline_source"),
    ("pipelineSources-no-glob", {"pipelineSources": ["*"]}, {}, "rules.pipelineSources", "pipeline_source"),
    ("runnerIds", {"runnerIds": [12, 13]}, {}, None, "runner_id"),
    ("runnerIds-other", {"runnerIds": [13]}, {}, "rules.runnerIds", "runner_id"),
    ("runnerIds-string-claim", {"runnerIds": [12]}, {"runner_id": "12"}, "rules.runnerIds", "runner_id"),
    ("runnerIds-missing", {"runnerIds": [12]}, {"runner_id": DROP}, "rules.runnerIds", "runner_id"),
    ("runnerIds-bool-claim", {"runnerIds": [1]}, {"runner_id": True}, "rules.runnerIds", "runner_id"),
    ("runnerIds-float-claim", {"runnerIds": [12]}, {"runner_id": 12.0}, "rules.runnerIds", "runner_id"),
    ("pipelineSources-list-claim", {"pipelineSources": ["push"]}, {"pipeline_source": ["push"]},
     "rules.pipelineSources", "pipeline_source"),
    ("runnerEnvironment", {"runnerEnvironment": "self-hosted"}, {}, None, "runner_environment"),
    ("runnerEnvironment-hosted", {"runnerEnvironment": "self-hosted"}, {"runner_environment": "gitlab-hosted"},
     "rules.runnerEnvironment", "runner_environment"),
    ("minAccessLevel-null", {"minAccessLevel": "guest"}, {"user_access_level": None}, "rules.minAccessLevel",
     "user_access_level"),
    ("minAccessLevel-missing", {"minAccessLevel": "guest"}, {"user_access_level": DROP}, "rules.minAccessLevel",
     "user_access_level"),
    ("minAccessLevel-unknown", {"minAccessLevel": "guest"}, {"user_access_level": "admin"}, "rules.minAccessLevel",
     "user_access_level"),
    ("condition-true", {"condition": 'claims.user_login != "renovate-bot"'}, {}, None, "claims"),
    ("condition-false", {"condition": 'claims.user_login != "renovate-bot"'}, {"user_login": "renovate-bot"},
     "rules.condition", "claims"),
    ("condition-int-claim", {"condition": "claims.runner_id == 12"}, {}, None, "claims"),
    ("condition-missing-claim", {"condition": 'claims.groups_direct.exists(g, g == "ops")'}, {}, "rules.condition",
     "claims"),
    ("condition-has", {"condition": "has(claims.groups_direct)"}, {}, "rules.condition", "claims"),
    ("condition-list-claim", {"condition": '"ops" in claims.groups_direct'}, {"groups_direct": ["ops", "dev"]},
     None, "claims"),
    ("condition-non-bool", {"condition": "claims.ref"}, {}, "rules.condition", "claims"),
    ("condition-div-zero", {"condition": "1 / 0 == 1"}, {}, "rules.condition", "claims"),
    ("condition-bad-conversion", {"condition": "int(claims.ref) > 0"}, {}, "rules.condition", "claims"),
    ("condition-null", {"condition": "claims.user_access_level == null"}, {"user_access_level": None}, None,
     "claims"),
    ("all-rules-hold", {"refs": ["main"], "refType": "branch", "protectedRef": True, "environments": ["production"],
                        "protectedEnvironment": True, "pipelineSources": ["push"], "runnerIds": [12],
                        "runnerEnvironment": "self-hosted", "minAccessLevel": "maintainer",
                        "condition": "claims.sha.size() == 40"}, {}, None, ""),
    ("no-rules", {}, {}, None, ""),
]


@pytest.mark.parametrize(("rules", "claims", "rule", "claim"), [c[1:] for c in RULE_CASES],
                         ids=[c[0] for c in RULE_CASES])
def test_rule(rules: dict[str, Any], claims: dict[str, Any], rule: str | None, claim: str) -> None:
    binding = compile_spec(rules=rules)
    failure = binding.evaluate(gitlab_claims(**claims))
    if rule is None:
        assert failure is None
        return
    assert failure is not None
    assert failure.rule == rule
    assert failure.claim == claim
    actual = gitlab_claims(**claims).get(claim)
    if claim != "claims":
        assert failure.actual == actual


@pytest.mark.parametrize(("minimum", "level"), list(itertools.product(ACCESS_LEVELS, ACCESS_LEVELS)),
                         ids=[f"{m}-vs-{lv}" for m, lv in itertools.product(ACCESS_LEVELS, ACCESS_LEVELS)])
def test_min_access_level_ordering(minimum: str, level: str) -> None:
    binding = compile_spec(rules={"minAccessLevel": minimum})
    failure = binding.evaluate(gitlab_claims(user_access_level=level))
    assert (failure is None) is (ACCESS_LEVELS.index(level) >= ACCESS_LEVELS.index(minimum))
    if failure is not None:
        assert failure.expected == f"{minimum} or higher"
        assert failure.actual == level


def test_rule_failure_names_rule_claim_expected_actual() -> None:
    binding = compile_spec(rules={"refs": ["main", "release/*"]})
    failure = binding.evaluate(gitlab_claims(ref="feature/x"))
    assert failure == RuleFailure("rules.refs", "ref", "one of ['main', 'release/*']", "feature/x")
    assert failure.as_dict() == {"rule": "rules.refs", "claim": "ref", "expected": "one of ['main', 'release/*']",
                                 "actual": "feature/x"}
    sentence = failure.sentence()
    assert "rules.refs" in sentence and "ref" in sentence and "'feature/x'" in sentence and "release/*" in sentence


def test_first_failed_rule_is_reported() -> None:
    binding = compile_spec(rules={"refs": ["main"], "refType": "tag", "minAccessLevel": "owner"})
    failure = binding.evaluate(gitlab_claims(ref="dev"))
    assert failure is not None and failure.rule == "rules.refs"
    failure = binding.evaluate(gitlab_claims())
    assert failure is not None and failure.rule == "rules.refType"


def test_project_checked_before_rules() -> None:
    binding = compile_spec(rules={"refs": ["main"]})
    failure = binding.evaluate(gitlab_claims(project_path="other/x", ref="dev"))
    assert failure is not None and failure.rule == "project.path"


def test_condition_error_is_a_denial_with_its_reason() -> None:
    binding = compile_spec(rules={"condition": 'claims.nope == "x"'})
    failure = binding.evaluate(gitlab_claims())
    assert failure is not None
    assert failure.expected == 'claims.nope == "x"'
    assert "evaluation error" in str(failure.actual)
    non_bool = compile_spec(rules={"condition": "claims.ref"}).evaluate(gitlab_claims())
    assert non_bool is not None and "not a boolean" in str(non_bool.actual)


# ---------------------------------------------------------------- compile errors

def _errors(spec: dict[str, Any], namespace: str = "team-a", name: str = "deploy") -> list[str]:
    with pytest.raises(CompileError) as exc:
        compile_binding(namespace, name, spec)
    assert exc.value.errors, "a CompileError must name at least one field"
    assert str(exc.value)
    return [e.field for e in exc.value.errors]


COMPILE_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("bad-ref-pattern", base_spec(rules={"refs": ["main", "bad\npattern"]}), "spec.rules.refs[1]"),
    ("empty-ref-pattern", base_spec(rules={"refs": [""]}), "spec.rules.refs[0]"),
    ("empty-refs", base_spec(rules={"refs": []}), "spec.rules.refs"),
    ("refs-not-a-list", base_spec(rules={"refs": "main"}), "spec.rules.refs"),
    ("empty-environments", base_spec(rules={"environments": []}), "spec.rules.environments"),
    ("bad-environment-pattern", base_spec(rules={"environments": ["a\tb"]}), "spec.rules.environments[0]"),
    ("bad-cel", base_spec(rules={"condition": "claims.ref =="}), "spec.rules.condition"),
    ("empty-cel", base_spec(rules={"condition": ""}), "spec.rules.condition"),
    ("bad-ref-type", base_spec(rules={"refType": "merge_request"}), "spec.rules.refType"),
    ("bad-access-level", base_spec(rules={"minAccessLevel": "admin"}), "spec.rules.minAccessLevel"),
    ("bad-runner-environment", base_spec(rules={"runnerEnvironment": "cloud"}), "spec.rules.runnerEnvironment"),
    ("bad-runner-id", base_spec(rules={"runnerIds": ["twelve"]}), "spec.rules.runnerIds.0"),
    ("unknown-rule", base_spec(rules={"branch": "main"}), "spec.rules.branch"),
    ("unknown-top-field", {**base_spec(), "roles": []}, "spec.roles"),
    ("unknown-aws-field", base_spec(aws={"sessionPolicy": "x"}), "spec.aws.sessionPolicy"),
    ("bad-role-arn", base_spec(aws={"roleArn": "arn:aws:iam::123:role/x"}), "spec.aws.roleArn"),
    ("user-arn", base_spec(aws={"roleArn": "arn:aws:iam::123456789012:user/x"}), "spec.aws.roleArn"),
    ("role-name-only", base_spec(aws={"roleArn": "payments-deploy"}), "spec.aws.roleArn"),
    ("missing-role", base_spec(aws={"roleArn": DROP}), "spec.aws.roleArn"),
    ("missing-aws", base_spec(aws=DROP), "spec.aws"),
    ("missing-project", base_spec(project=DROP), "spec.project"),
    ("no-selector", base_spec(project={}), "spec.project"),
    ("two-selectors", base_spec(project={"path": "a/b", "id": "1"}), "spec.project"),
    ("three-selectors", base_spec(project={"path": "a/b", "id": "1", "namespace": "a"}), "spec.project"),
    ("id-not-digits", base_spec(project={"id": "abc"}), "spec.project.id"),
    ("empty-path", base_spec(project={"path": ""}), "spec.project.path"),
    ("unknown-selector", base_spec(project={"group": "a"}), "spec.project.group"),
    ("lifetime-too-short", base_spec(aws={"tokenLifetimeSeconds": 59}), "spec.aws.tokenLifetimeSeconds"),
    ("lifetime-too-long", base_spec(aws={"tokenLifetimeSeconds": 43201}), "spec.aws.tokenLifetimeSeconds"),
    ("too-many-tags", base_spec(aws={"sessionTags": [f"t{i}" for i in range(51)]}), "spec.aws.sessionTags"),
    ("bad-tag-key", base_spec(aws={"sessionTags": ["ref", "bad#key"]}), "spec.aws.sessionTags[1]"),
    ("aws-prefix-tag", base_spec(aws={"sessionTags": ["aws:ref"]}), "spec.aws.sessionTags[0]"),
    ("aws-prefix-tag-upper", base_spec(aws={"sessionTags": ["AWS:ref"]}), "spec.aws.sessionTags[0]"),
    ("long-tag-key", base_spec(aws={"sessionTags": ["k" * 129]}), "spec.aws.sessionTags[0]"),
    ("duplicate-tags", base_spec(aws={"sessionTags": ["ref", "Ref"]}), "spec.aws.sessionTags[1]"),
    ("transitive-not-tagged", base_spec(aws={"sessionTags": ["ref"], "transitiveTags": ["ref", "sha"]}),
     "spec.aws.transitiveTags[1]"),
    ("empty-audience", base_spec(aws={"audience": " "}), "spec.aws.audience"),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in COMPILE_ERRORS], ids=[c[0] for c in COMPILE_ERRORS])
def test_compile_error_names_the_field(spec: dict[str, Any], field: str) -> None:
    assert field in _errors(spec)


@pytest.mark.parametrize(("namespace", "name", "field"), [
    ("Team-A", "deploy", "metadata.namespace"),
    ("team_a", "deploy", "metadata.namespace"),
    ("t" * 64, "deploy", "metadata.namespace"),
    ("", "deploy", "metadata.namespace"),
    ("team-a", "Deploy", "metadata.name"),
    ("team-a", "", "metadata.name"),
    ("team-a", "d" * 129, "metadata.name"),
    ("team-a", "deploy:prod", "metadata.name"),
    ("team-a", "-deploy", "metadata.name"),
], ids=["upper-ns", "underscore-ns", "long-ns", "empty-ns", "upper-name", "empty-name", "name-129", "colon-name",
        "leading-dash"])
def test_bad_metadata(namespace: str, name: str, field: str) -> None:
    assert field in _errors(base_spec(), namespace, name)


@pytest.mark.parametrize("name", ["d" * 128, "deploy.prod", "a", "0-deploy"], ids=["128", "dotted", "one", "digit"])
def test_good_names(name: str) -> None:
    assert compile_binding("team-a", name, base_spec()).subject == f"system:gitlabawsbinding:team-a:{name}"


def test_every_problem_is_reported_at_once() -> None:
    spec = base_spec(project={"path": "a/b", "id": "1"}, rules={"refs": [], "condition": "(("},
                     aws={"roleArn": "nope", "sessionTags": ["aws:x"], "transitiveTags": ["y"]})
    fields = _errors(spec, "BAD", "")
    for expected in ("metadata.namespace", "metadata.name", "spec.project", "spec.rules.refs",
                     "spec.rules.condition", "spec.aws.roleArn", "spec.aws.sessionTags[0]",
                     "spec.aws.transitiveTags[0]"):
        assert expected in fields


def test_pydantic_errors_reported_with_metadata_errors() -> None:
    fields = _errors(base_spec(rules={"refType": "x"}), "team-a", "BAD")
    assert "metadata.name" in fields and "spec.rules.refType" in fields


def test_fifty_tags_allowed() -> None:
    tags = [f"t{i}" for i in range(50)]
    assert compile_spec(aws={"sessionTags": tags}).spec.aws.session_tags == tuple(tags)


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::123456789012:role/payments-deploy",
    "arn:aws:iam::123456789012:role/path/to/role",
    "arn:aws-cn:iam::123456789012:role/x",
    "arn:aws-us-gov:iam::123456789012:role/x",
    "arn:aws:iam::123456789012:role/a+b=c,d.e@f_g-h",
])
def test_good_role_arns(arn: str) -> None:
    assert compile_spec(aws={"roleArn": arn}).spec.aws.role_arn == arn


# ---------------------------------------------------------------- manifests


def manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND,
                           "metadata": {"name": "deploy", "namespace": "team-a"}, "spec": base_spec()}
    doc.update(overrides)
    return doc


def test_compile_manifest() -> None:
    b = compile_manifest(manifest())
    assert (b.namespace, b.name, b.key) == ("team-a", "deploy", "team-a/deploy")
    assert b.subject == subject_for("team-a", "deploy") == "system:gitlabawsbinding:team-a:deploy"


def test_manifest_without_namespace_is_in_default() -> None:
    assert compile_manifest(manifest(metadata={"name": "x"})).namespace == "default"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"apiVersion": "gitlab-sts.io/v1"}, "apiVersion"),
    ({"kind": "GitLabBinding"}, "kind"),
    ({"spec": None}, "spec"),
    ({"spec": ["x"]}, "spec"),
    ({"metadata": "x"}, "metadata"),
    ({"metadata": {}}, "metadata.name"),
], ids=["api-version", "kind", "no-spec", "spec-list", "metadata-string", "no-name"])
def test_bad_manifest(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(CompileError) as exc:
        compile_manifest(manifest(**overrides))
    assert field in [e.field for e in exc.value.errors]


# ---------------------------------------------------------------- grants


def _grant(binding_aws: dict[str, Any], claims: dict[str, Any] | None = None, *, lifetime: int = 900,
           max_lifetime: int = 3600) -> Grant | RuleFailure:
    b = compile_spec(aws=binding_aws)
    return b.grant(gitlab_claims(**(claims or {})), default_audience="sts.amazonaws.com",
                   default_lifetime=lifetime, max_lifetime=max_lifetime)


@pytest.mark.parametrize(("binding_lifetime", "default", "cap", "expected"), [
    (None, 900, 3600, 900),
    (1800, 900, 3600, 1800),
    (7200, 900, 3600, 3600),
    (60, 900, 3600, 60),
    (None, 900, 600, 600),
], ids=["default", "binding", "binding-over-cap", "binding-minimum", "default-over-cap"])
def test_grant_lifetime(binding_lifetime: int | None, default: int, cap: int, expected: int) -> None:
    aws = {} if binding_lifetime is None else {"tokenLifetimeSeconds": binding_lifetime}
    grant = _grant(aws, lifetime=default, max_lifetime=cap)
    assert isinstance(grant, Grant)
    assert grant.lifetime == expected


def test_grant_shape() -> None:
    grant = _grant({"sessionTags": ["project_path", "ref", "runner_id", "ref_protected", "missing_claim",
                                    "user_access_level"],
                    "transitiveTags": ["project_path"], "sourceIdentity": "user_login",
                    "audience": "sts.example.com"}, {"user_access_level": None})
    assert grant == Grant(
        subject="system:gitlabawsbinding:team-a:deploy", role_arn=ROLE, audience="sts.example.com", lifetime=900,
        tags={"project_path": "platform/payments", "ref": "main", "runner_id": "12", "ref_protected": "true",
              "missing_claim": "", "user_access_level": ""},
        transitive_tags=("project_path",), source_identity="alice",
    )


def test_grant_default_audience() -> None:
    grant = _grant({})
    assert isinstance(grant, Grant) and grant.audience == "sts.amazonaws.com"
    assert grant.tags == {} and grant.source_identity is None


def test_grant_sanitises_tag_values() -> None:
    grant = _grant({"sessionTags": ["ref", "environment"]}, {"ref": "feat#1;rm", "environment": "é" * 300})
    assert isinstance(grant, Grant)
    assert grant.tags == {"ref": "feat_1_rm", "environment": "é" * 256}


@pytest.mark.parametrize(("claims", "expected"), [
    ({"user_login": "alice"}, "alice"),
    ({"user_login": "bob builder"}, "bob_builder"),
    ({"user_login": "x"}, None),
    ({"user_login": ""}, None),
    ({"user_login": DROP}, None),
], ids=["plain", "sanitised", "too-short", "empty", "missing"])
def test_grant_source_identity(claims: dict[str, Any], expected: str | None) -> None:
    grant = _grant({"sourceIdentity": "user_login"}, claims)
    if expected is None:
        assert isinstance(grant, RuleFailure)
        assert (grant.rule, grant.claim) == ("aws.sourceIdentity", "user_login")
    else:
        assert isinstance(grant, Grant) and grant.source_identity == expected


# ---------------------------------------------------------------- index


def _index(*bindings: Any, default_issuer: str | None = GITLAB) -> BindingIndex:
    return BindingIndex(bindings, default_issuer=default_issuer)


def test_index_finds_bindings_of_the_project_only() -> None:
    by_path = compile_spec("by-path", project={"path": "Platform/Payments"})
    by_id = compile_spec("by-id", project={"id": "42"})
    by_ns = compile_spec("by-ns", project={"namespace": "platform"})
    by_sub = compile_spec("by-sub", "team-b", project={"namespace": "platform/sub"})
    other = compile_spec("other", project={"path": "platform/other"})
    other_id = compile_spec("other-id", project={"id": "43"})
    index = _index(other, by_sub, by_ns, by_id, by_path, other_id)
    assert len(index) == 6
    found = [b.key for b in index.for_token(GITLAB, gitlab_claims())]
    assert found == ["team-a/by-id", "team-a/by-ns", "team-a/by-path"]
    deep = [b.key for b in index.for_token(GITLAB, gitlab_claims(project_path="platform/sub/x/y", project_id="9"))]
    assert deep == ["team-a/by-ns", "team-b/by-sub"]
    assert index.for_token("https://other-gitlab.example.com", gitlab_claims()) == []


def test_index_respects_binding_issuer() -> None:
    here = compile_spec("here", issuer=GITLAB)
    there = compile_spec("there", issuer="https://gitlab.other.example.com")
    index = _index(here, there, default_issuer=None)
    assert [b.key for b in index.for_token(GITLAB, gitlab_claims())] == ["team-a/here"]
    assert [b.key for b in index.for_token("https://gitlab.other.example.com", gitlab_claims())] == ["team-a/there"]


def test_index_without_default_issuer_keeps_unresolved() -> None:
    b = compile_spec()
    index = _index(b, default_issuer=None)
    assert index.unresolved == [b]
    assert index.for_token(GITLAB, gitlab_claims()) == []


def test_index_evaluate_reports_each_candidate() -> None:
    ok = compile_spec("ok", rules={"refs": ["main"]})
    bad = compile_spec("bad", rules={"refs": ["release/*"]})
    rows = _index(ok, bad).evaluate(GITLAB, gitlab_claims())
    assert [(c.binding.name, c.failure is None) for c in rows] == [("bad", False), ("ok", True)]


# ---------------------------------------------------------------- CEL programs: bounded, shared, lazy (issue #14)


def test_cel_programs_are_bounded_shared_and_recompiled_after_eviction() -> None:
    from gitlab_sts.core import bindings

    bindings._compile_cel.cache_clear()
    count = bindings.CEL_PROGRAM_CACHE + 40
    compiled = [compile_spec(f"b-{i}", rules={"condition": f'claims.user_login != "bot-{i}"'}) for i in range(count)]
    # A binding keeps its condition's source, not its program: the cache alone holds programs, and stays bounded.
    assert bindings._compile_cel.cache_info().currsize == bindings.CEL_PROGRAM_CACHE
    # The first ones were evicted: they compile again on use and still decide right.
    assert compiled[0].evaluate(gitlab_claims(user_login="bot-0")) is not None
    assert compiled[0].evaluate(gitlab_claims(user_login="someone")) is None
    misses = bindings._compile_cel.cache_info().misses
    twins = [compile_spec(f"twin-{i}", rules={"condition": 'claims.user_login != "bot-0"'}) for i in range(5)]
    assert all(t.evaluate(gitlab_claims(user_login="bot-0")) is not None for t in twins)
    assert bindings._compile_cel.cache_info().misses == misses  # identical source: compiled once, shared


def test_lazy_cel_compiles_on_first_use_and_a_bad_condition_denies() -> None:
    from gitlab_sts.core import bindings

    with pytest.raises(CompileError, match="spec.rules.condition"):
        compile_binding("team-a", "eager", base_spec(rules={"condition": "claims.("}))
    lazy = compile_binding("team-a", "lazy", base_spec(rules={"condition": "claims.("}), lazy_cel=True)
    failure = lazy.evaluate(gitlab_claims())
    assert failure is not None and failure.rule == "rules.condition"
    assert "does not compile" in str(failure.actual)
    bindings._compile_cel.cache_clear()
    good = compile_binding("team-a", "lazy-good", base_spec(rules={"condition": 'claims.ref == "main"'}),
                           lazy_cel=True)
    assert bindings._compile_cel.cache_info().currsize == 0  # nothing compiled at load
    assert good.evaluate(gitlab_claims(ref="main")) is None
    assert good.evaluate(gitlab_claims(ref="dev")) is not None
