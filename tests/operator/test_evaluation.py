"""Pure builders: evaluation, status, events and the memo, called directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from operator_helpers import GUARDED_YAML, manifest, settings, spec

from gitlab_sts.operator.evaluation import (
    COMPILED,
    FORBIDDEN,
    INVALID_SPEC,
    UNTRUSTED_ISSUER,
    Context,
    desired_status,
    evaluate,
    project_label,
    rejected_anew,
    rejection_event,
    status_patch,
)
from gitlab_sts.operator.memo import BindingMemo

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CTX = Context.from_settings(settings())
TWO = Context("https://sts.example.com", "sts.amazonaws.com", ("https://a.example", "https://b.example"))


@pytest.mark.parametrize(("ctx", "body", "reason", "field"), [
    (CTX, spec(), COMPILED, ""),
    (CTX, spec(project={}), INVALID_SPEC, "spec.project"),
    (CTX, spec(aws={"roleArn": "arn:aws:iam::1:role/x"}), INVALID_SPEC, "spec.aws.roleArn"),
    (CTX, spec(rules={"refs": ["main"], "condition": "claims.("}), INVALID_SPEC, "spec.rules.condition"),
    (CTX, spec(rules={"refType": "commit"}), INVALID_SPEC, "spec.rules.refType"),
    (CTX, spec(issuer="https://other.example"), UNTRUSTED_ISSUER, "spec.issuer"),
    (TWO, spec(), UNTRUSTED_ISSUER, "spec.issuer"),
    (TWO, spec(issuer="https://b.example"), COMPILED, ""),
    (Context.from_settings(settings(GUARDED_YAML)), spec(), COMPILED, ""),
    (Context.from_settings(settings(GUARDED_YAML)), spec(aws={"roleArn": "arn:aws:iam::210987654321:role/x"}),
     FORBIDDEN, "spec.aws.roleArn"),
])
def test_evaluate(ctx: Context, body: dict[str, object], reason: str, field: str) -> None:
    ev = evaluate("team-a", "b", body, 4, ctx)
    assert ev.reason == reason
    assert ev.ready == (reason == COMPILED)
    assert ev.message.startswith(field)
    assert (ev.trust_policy is not None) == ev.ready


def test_name_too_long_is_refused() -> None:
    ev = evaluate("team-a", "x" * 129, spec(), 1, CTX)
    assert ev.reason == INVALID_SPEC and "metadata.name" in ev.message


def test_project_label() -> None:
    assert project_label({"project": {"path": "a/b"}}) == "a/b"
    assert project_label({"project": {"id": "7"}}) == "id:7"
    assert project_label({"project": {"namespace": "grp/"}}) == "grp/**"
    assert project_label("junk") == ""


def test_status_transitions_keep_time_until_flip() -> None:
    ok = evaluate("ns", "b", spec(), 1, CTX)
    first = desired_status(ok, None, NOW)
    assert first["conditions"][0]["lastTransitionTime"] == "2030-01-01T00:00:00Z"
    again = desired_status(ok, first, NOW + timedelta(hours=1))
    assert again == first and status_patch(first, again) is None
    bad = evaluate("ns", "b", spec(project={}), 2, CTX)
    flipped = desired_status(bad, first, NOW + timedelta(hours=2))
    assert flipped["conditions"][0]["lastTransitionTime"] == "2030-01-01T02:00:00Z"
    patch = status_patch(first, flipped)
    assert patch is not None and patch["status"]["trustPolicy"] is None  # removed by the merge patch
    assert rejected_anew(bad, first)
    assert not rejected_anew(bad, flipped)
    assert not rejected_anew(ok, None)


def test_rejection_event_names_the_binding() -> None:
    bad = evaluate("ns", "b", spec(project={}), 2, CTX)
    obj = manifest("ns", "b")
    obj["metadata"]["uid"] = "u-1"
    event = rejection_event(obj, bad, NOW, "gitlab-sts-operator")
    assert event["involvedObject"] == {"apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
                                       "namespace": "ns", "name": "b", "uid": "u-1", "resourceVersion": ""}
    assert event["type"] == "Warning" and event["reason"] == INVALID_SPEC
    assert event["metadata"]["name"].startswith("b.")


def test_memo_versions_move_only_on_config_changes() -> None:
    memo = BindingMemo(CTX)
    assert memo.upsert(memo.evaluate("ns", "a", spec(), 1))
    v = memo.version
    assert not memo.upsert(memo.evaluate("ns", "a", spec(), 1))  # same generation and spec: memoised
    assert not memo.upsert(memo.evaluate("ns", "bad", spec(project={}), 1))  # rejected: config unchanged
    assert memo.version == v
    assert memo.upsert(memo.evaluate("ns", "a", spec(rules={"refs": ["dev"]}), 2))
    assert not memo.remove(("ns", "bad"))
    assert memo.remove(("ns", "a"))
    assert memo.counts() == (0, 0)


def test_memo_reuses_evaluation_object() -> None:
    memo = BindingMemo(CTX)
    ev = memo.evaluate("ns", "a", spec(), 1)
    memo.upsert(ev)
    assert memo.evaluate("ns", "a", spec(), 1) is ev
    assert memo.evaluate("ns", "a", spec(rules={}), 1) is not ev  # same generation but the spec changed


def test_memo_replace_all_and_payload_cache() -> None:
    memo = BindingMemo(CTX)
    memo.replace_all([evaluate("ns", n, spec(), 1, CTX) for n in ("a", "b")])
    first = memo.payload()
    assert memo.payload() is first
    assert not memo.replace_all([evaluate("ns", n, spec(), 1, CTX) for n in ("a", "b")])
    assert memo.replace_all([evaluate("ns", "a", spec(), 1, CTX)])
    assert memo.payload()[2] != first[2]
