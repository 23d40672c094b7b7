"""Property tests: any input gives a 4xx RFC 6749 answer (never a 500, never a token) unless it is a real match."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitlab_sts.core.bindings import BindingIndex, CompiledBinding, RuleFailure, compile_binding
from gitlab_sts.core.claims import check_types
from gitlab_sts.core.errors import CompileError, ExchangeError, InvalidRequest
from gitlab_sts.core.exchange import parse_form
from gitlab_sts.core.jwtparse import b64url_encode as _b64
from gitlab_sts.core.jwtparse import parse_compact
from gitlab_sts.testing.gitlab import job_claims
from tests.fuzz.appkit import GITLAB, STS, App, assert_refused
from tests.service.harness import GRANT, JWT_TYPE

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("grant_type", "subject_token", "subject_token_type", "resource", "audience", "actor_token",
          "duration_seconds", "scope")



@FAST
@given(body=st.binary(max_size=600))
def test_any_body_bytes_are_refused_cleanly(app: App, body: bytes) -> None:
    for path in ("/v1/token", "/v1/credentials", "/v1/explain"):
        assert_refused(app.post(body, path))


@FAST
@given(form=st.lists(st.tuples(st.sampled_from(FIELDS) | st.text(max_size=10),
                               st.text(max_size=60) | st.sampled_from([GRANT, JWT_TYPE, "", "."])), max_size=8),
       content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain",
                                     "multipart/form-data; boundary=x", ""]))
def test_any_form_is_refused_cleanly(app: App, form: list[tuple[str, str]], content_type: str) -> None:
    assert_refused(app.post(urllib.parse.urlencode(form), "/v1/token", content_type))


@FAST
@given(header=json_values, payload=json_values, signature=st.binary(max_size=300))
def test_any_unsigned_or_badly_signed_token_is_refused(app: App, header: Any, payload: Any, signature: bytes) -> None:
    token = ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)])
    assert_refused(app.exchange(token), (400,))


@FAST
@given(token=st.text(max_size=300))
def test_any_text_token_is_refused(app: App, token: str) -> None:
    assert_refused(app.exchange(token), (400, 413))


@FAST
@given(text=st.text(max_size=400))
def test_parse_compact_raises_only_invalid_request(text: str) -> None:
    try:
        parsed = parse_compact(text, max_bytes=16384)
    except InvalidRequest:
        return
    assert isinstance(parsed.header, dict) and isinstance(parsed.claims, dict)


@FAST
@given(form=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), st.lists(st.text(max_size=40), max_size=3)))
def test_parse_form_raises_only_exchange_errors(form: dict[str, list[str]]) -> None:
    try:
        parse_form(form)
    except ExchangeError as exc:
        status = exc.status
        assert 400 <= status < 500


GITLAB_CLAIMS = list(job_claims(GITLAB, STS, environment="staging", environment_protected="false"))


@FAST
@given(claim=st.sampled_from(GITLAB_CLAIMS + ["environment_protected", "deployment_tier", "nbf"]),
       value=json_values)
def test_signed_tokens_with_any_claim_value_never_fail_open(app: App, claim: str, value: Any) -> None:
    """A GitLab-signed token with one claim changed to any JSON value: a token only when every rule holds."""
    claims = job_claims(GITLAB, STS, environment="staging", environment_protected="false")
    claims[claim] = value  # None stays a JSON null
    answer = app.exchange(app.gitlab.sign(claims))
    if answer.status_code != 200:
        assert_refused(answer, (400, 403))
        return
    # Issued: the claims must be GitLab-typed and the binding's rules must hold for them.
    check_types(claims)
    body = answer.get_json()
    assert body["binding"] == "team-payments/deploy-staging"
    assert claims["project_id"] == "4321" and claims["ref"] == "main" and claims["environment"] == "staging"
    assert claims["ref_protected"] == "true" and claims["runner_environment"] == "self-hosted"
    assert claims["aud"] == STS or (isinstance(claims["aud"], list) and STS in claims["aud"])


spec_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30)
    | st.sampled_from(["main", "release/*", "**", "branch", "maintainer", "self-hosted",
                       "arn:aws:iam::123456789012:role/x", "claims.ref == 'main'", "has(claims.x)", "1 +"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["path", "id", "namespace", "refs", "refType", "protectedRef", "environments", "condition",
                         "runnerIds", "minAccessLevel", "roleArn", "sessionTags", "transitiveTags", "audience",
                         "sourceIdentity", "tokenLifetimeSeconds", "issuer", "project", "rules", "aws"]),
        inner, max_size=4),
    max_leaves=16,
)
VALID_SPEC: dict[str, Any] = {"project": {"path": "platform/payments"}, "rules": {"refs": ["main"]},
                              "aws": {"roleArn": "arn:aws:iam::123456789012:role/deploy"}}


@FAST
@given(section=st.sampled_from(["project", "rules", "aws", None]), value=spec_values,
       claims=st.dictionaries(st.sampled_from(GITLAB_CLAIMS), json_values, max_size=6))
def test_binding_compile_and_evaluate_never_crash(section: str | None, value: Any, claims: dict[str, Any]) -> None:
    spec: Any = value if section is None else {**VALID_SPEC, section: value}
    try:
        binding = compile_binding("team-a", "fuzzed", spec if isinstance(spec, dict) else {"spec": spec})
    except CompileError as exc:
        errors = exc.errors
        assert errors and all(e.field for e in errors)
        return
    assert isinstance(binding, CompiledBinding)
    failure = binding.evaluate(claims)
    assert failure is None or isinstance(failure, RuleFailure)
    # Merged, not passed as keywords: the drawn names include job_claims' own parameters (iss, aud).
    failure = binding.evaluate({**job_claims(GITLAB, STS), **claims})
    assert failure is None or isinstance(failure, RuleFailure)


# Each condition with the claims it reads (None: the whole claims map), written out by hand.
CONDITIONS: list[tuple[str, tuple[str, ...] | None]] = [
    ('!has(claims.environment)', ("environment",)),
    ('claims.user_login != "renovate-bot"', ("user_login",)),
    ('claims.runner_id > 10 && claims.ref.startsWith("rel")', ("runner_id", "ref")),
    ('size(claims) > 3', None),
    ('claims.pipeline_source in ["push", "web"]', ("pipeline_source",)),
    ('claims["ref"] == "main"', None),
]


@FAST
@given(condition=st.sampled_from(CONDITIONS),
       claims=st.lists(st.dictionaries(st.sampled_from(["environment", "user_login", "runner_id", "ref",
                                                        "pipeline_source", "job_id"]), json_values, max_size=5),
                       min_size=1, max_size=4))
def test_cel_condition_cache_agrees_with_a_fresh_evaluation(condition: tuple[str, tuple[str, ...] | None],
                                                            claims: list[dict[str, Any]]) -> None:
    """Remembered CEL results (core.bindings) equal a fresh evaluation over the claims the condition reads.

    (A claim the condition does not read cannot change its answer, even one CEL cannot represent.)
    """
    source, reads = condition
    binding = compile_binding("team-a", "cel", {**VALID_SPEC, "rules": {"condition": source}})
    env = celpy.Environment()
    program = env.program(env.compile(source))
    for c in claims + claims:  # twice: the second pass is answered from the cache
        full = {**job_claims(GITLAB, STS), **c}
        got = binding.evaluate(full)
        visible = full if reads is None else {k: v for k, v in full.items() if k in reads}
        try:
            result: Any = program.evaluate({"claims": json_to_cel(visible)})
            expected = isinstance(result, celpy.celtypes.BoolType) and bool(result)
        except Exception:
            expected = False
        assert (got is None) == expected, (source, c, got)


segments = st.lists(st.sampled_from(["a", "A", "b", "ab", "", "é", "É"]), min_size=1, max_size=4).map("/".join)


@FAST
@given(kind=st.sampled_from(["path", "namespace", "id"]), selector=segments, path=segments,
       project_id=st.sampled_from(["42", "43"]))
def test_index_and_check_agree_with_the_documented_project_rule(kind: str, selector: str, path: str,
                                                                project_id: str) -> None:
    # README: path is case-insensitive equality, namespace any project below the group, id exact.
    if kind == "id":
        selector = "42"
    try:
        binding = compile_binding("team-a", "b", {**VALID_SPEC, "project": {kind: selector}})
    except CompileError:
        assert kind in ("path", "namespace") and selector == ""  # min_length 1
        return
    claims = {**job_claims(GITLAB, STS), "project_path": path, "project_id": project_id}
    documented = {"id": project_id == selector, "path": path.casefold() == selector.casefold(),
                  "namespace": path.casefold().startswith(selector.casefold().rstrip("/") + "/")}[kind]
    found = binding in BindingIndex([binding], default_issuer=GITLAB).for_token(GITLAB, claims)
    failure = binding.evaluate(claims)
    assert found is documented
    assert (failure is None or not failure.rule.startswith("project.")) is documented
