"""The exchange over real HTTP: each example binding's happy path and every denial reason."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
import pytest

from tests.service.harness import Service

STAGING = "arn:aws:iam::111122223333:role/payments-deploy-staging"
PRODUCTION = "arn:aws:iam::444455556666:role/payments-deploy-production"
RELEASE = "arn:aws:iam::111122223333:role/payments-release"
READ_ONLY = "arn:aws:iam::111122223333:role/platform-read-only"


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = pyjwt.decode(token, options={"verify_signature": False})
    return claims


HAPPY = [
    pytest.param({"environment": "staging", "environment_protected": "false"}, "team-payments/deploy-staging",
                 STAGING, id="protected-branch-staging"),
    pytest.param({"environment": "production", "environment_protected": "true", "pipeline_source": "web"},
                 "team-payments/deploy-production", PRODUCTION, id="environment-gated-production"),
    pytest.param({"ref": "v1.4.0", "ref_type": "tag", "ref_path": "refs/tags/v1.4.0"},
                 "team-payments/release-tags", RELEASE, id="tag-release"),
    pytest.param({"ref": "feature/x", "ref_protected": "false"}, "platform/platform-read-only", READ_ONLY,
                 id="group-read-only"),
    pytest.param({"project_path": "platform/infra/dns", "project_id": "99", "namespace_path": "platform/infra",
                  "ref": "main"}, "platform/platform-read-only", READ_ONLY, id="group-read-only-subgroup"),
]


@pytest.mark.parametrize(("claims", "binding", "role"), HAPPY)
def test_each_example_binding_issues_a_token(service: Service, claims: dict[str, Any], binding: str,
                                             role: str) -> None:
    gitlab_token = service.job_token(**claims)
    answer = service.exchange(gitlab_token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["binding"] == binding
    assert body["role_arn"] == role
    assert body["token_type"] == "N_A"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    minted = _claims(body["access_token"])
    namespace, name = binding.split("/")
    assert minted["sub"] == f"system:gitlabawsbinding:{namespace}:{name}"
    assert minted["iss"] == service.url
    assert minted["aud"] == "sts.amazonaws.com"
    assert all(isinstance(minted[c], int) for c in ("iat", "nbf", "exp"))
    assert body["expires_in"] == minted["exp"] - minted["iat"]
    gitlab_exp = _claims(gitlab_token)["exp"]
    assert minted["exp"] <= gitlab_exp
    assert body["role_session_name"] == f"gitlab-{_claims(gitlab_token)['project_id']}-302"


def test_session_tags_and_source_identity(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false", user_login="bob:the/builder")
    minted = _claims(service.exchange(token).json()["access_token"])
    tags = minted["https://aws.amazon.com/tags"]
    assert tags["principal_tags"] == {
        "project_path": ["platform/payments"], "ref": ["main"], "environment": ["staging"],
        "pipeline_id": ["574"], "job_id": ["302"],
    }
    assert tags["transitive_tag_keys"] == ["project_path"]
    # ':' and '/' are not allowed in a source identity; they are replaced, not dropped.
    assert minted["https://aws.amazon.com/source_identity"] == "bob_the_builder"


def test_lifetime_never_outlives_the_gitlab_token(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false", lifetime=120)
    body = service.exchange(token).json()
    # The minted token ends exactly when the GitLab token does, and was issued no earlier than it.
    assert _claims(body["access_token"])["exp"] == _claims(token)["exp"]
    assert 100 <= body["expires_in"] <= 120


DENIALS = [
    pytest.param({"ref": "feature/x", "ref_protected": "false", "environment": "production",
                  "environment_protected": "true"}, "team-payments/deploy-production", "rules.refs", "ref",
                 "feature/x", id="ref"),
    pytest.param({"environment": "production", "environment_protected": "false"},
                 "team-payments/deploy-production", "rules.protectedEnvironment", "environment_protected",
                 "false", id="protected-environment"),
    pytest.param({"environment": "production", "environment_protected": "true", "user_access_level": "developer"},
                 "team-payments/deploy-production", "rules.minAccessLevel", "user_access_level", "developer",
                 id="access-level"),
    pytest.param({"environment": "production", "environment_protected": "true", "pipeline_source": "schedule"},
                 "team-payments/deploy-production", "rules.pipelineSources", "pipeline_source", "schedule",
                 id="pipeline-source"),
    pytest.param({"environment": "production", "environment_protected": "true",
                  "runner_environment": "gitlab-hosted"},
                 "team-payments/deploy-production", "rules.runnerEnvironment", "runner_environment",
                 "gitlab-hosted", id="runner-environment"),
    pytest.param({"environment": "production", "environment_protected": "true", "user_login": "renovate-bot"},
                 "team-payments/deploy-production", "rules.condition", "claims", False, id="cel-condition"),
    pytest.param({"environment": "staging", "environment_protected": "false", "ref_protected": "false"},
                 "team-payments/deploy-staging", "rules.protectedRef", "ref_protected", "false",
                 id="protected-ref"),
    pytest.param({"ref": "v1.0", "ref_type": "tag", "ref_protected": "false"},
                 "team-payments/release-tags", "rules.protectedRef", "ref_protected", "false",
                 id="unprotected-tag"),
]


@pytest.mark.parametrize(("claims", "binding", "rule", "claim", "actual"), DENIALS)
def test_denials_name_binding_rule_claim_and_values(service: Service, claims: dict[str, Any], binding: str,
                                                    rule: str, claim: str, actual: Any) -> None:
    answer = service.exchange(service.job_token(**claims))
    assert answer.status_code == 403, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["error"] == "invalid_target"
    tried = {row["binding"]: row for row in body["bindings_tried"]}
    assert tried[binding]["rule"] == rule
    assert tried[binding]["claim"] == claim
    assert tried[binding]["actual"] == actual
    assert binding in body["error_description"]


def test_unknown_project_reveals_no_other_bindings(service: Service) -> None:
    answer = service.exchange(service.job_token(project_path="other/thing", project_id="777",
                                                namespace_path="other"))
    assert answer.status_code == 403
    body = answer.json()
    assert body["error"] == "invalid_target"
    assert "other/thing" in body["error_description"]
    text = answer.text
    for secret in ("team-payments", "platform-read-only", "arn:aws"):
        assert secret not in text


def test_resource_naming_a_role_whose_binding_does_not_match_is_refused(service: Service) -> None:
    # A tag job matches only release-tags; asking for the read-only role does not pick another binding.
    # (Ambiguity between two matching bindings is covered in tests/core/test_exchange.py.)
    token = service.job_token(ref="v9", ref_type="tag", ref_path="refs/tags/v9")
    assert service.exchange(token).json()["binding"] == "team-payments/release-tags"
    answer = service.exchange(token, resource=READ_ONLY)
    assert answer.status_code == 403
    assert answer.json()["bindings_tried"]


def test_explain_lists_every_binding_of_the_project(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false")
    answer = service.exchange(token, path="/v1/explain")
    assert answer.status_code == 200
    rows = {r["binding"]: r for r in answer.json()["bindings"]}
    assert set(rows) == {"team-payments/deploy-staging", "team-payments/deploy-production",
                         "team-payments/release-tags", "platform/platform-read-only"}
    assert rows["team-payments/deploy-staging"]["matches"] is True
    assert rows["team-payments/deploy-production"]["failed"]["rule"] == "rules.environments"
    assert "access_token" not in answer.text


@pytest.mark.parametrize(("form", "error"), [
    pytest.param({"grant_type": "client_credentials"}, "unsupported_grant_type", id="grant-type"),
    pytest.param({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"}, "invalid_request",
                 id="no-subject-token"),
    pytest.param({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": "a.b.c",
                  "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request",
                 id="bad-token-type"),
])
def test_form_errors_are_rfc6749(service: Service, form: dict[str, str], error: str) -> None:
    import requests

    answer = requests.post(service.url + "/v1/token", data=form, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == error
    assert answer.headers["Cache-Control"] == "no-store"


def test_json_body_is_refused(service: Service) -> None:
    import requests

    answer = requests.post(service.url + "/v1/token", json={"subject_token": "x"}, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"


def test_unknown_path_and_method_are_json(service: Service) -> None:
    import requests

    assert requests.get(service.url + "/nope", timeout=10).json()["error"] == "invalid_request"
    answer = requests.get(service.url + "/v1/token", timeout=10)
    assert answer.status_code == 405
    assert answer.json()["error"] == "invalid_request"
    assert "POST" in answer.headers["Allow"].split(", ")  # RFC 9110: a 405 names the allowed methods
