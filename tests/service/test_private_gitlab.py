"""Several GitLab instances at once, an old GitLab's CI_JOB_JWT over HTTP, /readyz on publishing and pinned keys."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.service.harness import FakeGitLabProcess, Service, start_service

AUD = "https://sts.test.example"
PINNED = "https://gitlab.pinned.example"
ROLE_A = "arn:aws:iam::111122223333:role/deploy-from-a"
ROLE_B = "arn:aws:iam::111122223333:role/deploy-from-b"


def binding(name: str, issuer: str, role: str) -> str:
    return f"""apiVersion: gitlab-sts.io/v1alpha1
kind: GitLabAWSBinding
metadata: {{name: {name}, namespace: team-payments}}
spec:
  issuer: {issuer}
  project: {{path: platform/payments}}
  rules: {{refs: [main], protectedRef: true}}
  aws: {{roleArn: "{role}"}}
"""


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, fake_gitlab: FakeGitLabProcess) -> Iterator[
        tuple[Service, FakeGitLabProcess, FakeGitLabProcess]]:
    """A service trusting two live fake GitLabs (the second with legacyJobJwt) and one pinned instance."""
    other = FakeGitLabProcess()
    root = Path(tmp_path_factory.mktemp("two"))
    bindings = root / "manifests"
    bindings.mkdir()
    (bindings / "a.yaml").write_text(binding("from-a", fake_gitlab.issuer, ROLE_A))
    (bindings / "b.yaml").write_text(binding("from-b", other.issuer, ROLE_B))
    pinned_at = (datetime.now(UTC) - timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ")
    gitlab = [
        {"issuer": fake_gitlab.issuer, "audiences": [AUD]},
        {"issuer": other.issuer, "audiences": [AUD, other.issuer], "legacyJobJwt": True},
        {"issuer": PINNED, "audiences": [AUD], "jwks": other.jwks(), "pinnedAt": pinned_at, "pinnedMaxAgeDays": 90},
    ]
    svc = start_service(root / "svc", fake_gitlab, bindings=bindings, gitlab=gitlab, workers=1)
    yield svc, fake_gitlab, other
    svc.stop()
    other.stop()


def test_each_instance_reaches_only_its_own_bindings(two: tuple[Service, FakeGitLabProcess, FakeGitLabProcess]) -> None:
    svc, a, b = two
    got_a = svc.exchange(a.token(AUD))
    got_b = svc.exchange(b.token(AUD))
    assert got_a.status_code == 200 and got_a.json()["role_arn"] == ROLE_A, got_a.text
    assert got_b.status_code == 200 and got_b.json()["role_arn"] == ROLE_B, got_b.text
    # The same claims signed by the other instance's key do not pass as the first instance's token.
    forged = b.token(AUD, iss=a.issuer)
    assert svc.exchange(forged).status_code == 400


def test_ci_job_jwt_v2_and_ci_job_jwt_over_http(two: tuple[Service, FakeGitLabProcess, FakeGitLabProcess]) -> None:
    svc, a, b = two
    # CI_JOB_JWT_V2: aud is the instance URL, accepted because settings list it among the audiences.
    v2 = svc.exchange(b.token(b.issuer))
    assert v2.status_code == 200 and v2.json()["role_arn"] == ROLE_B, v2.text
    # The original CI_JOB_JWT: bare-host iss, no aud, sub job_<id>; verified with that instance's keys.
    legacy = b.token(None, iss="127.0.0.1", sub="job_302")  # type: ignore[arg-type]
    answer = svc.exchange(legacy)
    assert answer.status_code == 200 and answer.json()["role_arn"] == ROLE_B, answer.text
    # Signed by the other instance (which has no legacyJobJwt): its key is not the one for host 127.0.0.1's tokens.
    wrong_key = svc.exchange(a.token(None, iss="127.0.0.1", sub="job_302"))  # type: ignore[arg-type]
    assert wrong_key.status_code == 400
    assert wrong_key.json()["error_description"] in (
        "token is signed with a key the GitLab instance does not publish", "token signature is not valid")
    # The first instance never opted in: its v2-style token without aud is refused.
    no_aud = svc.exchange(a.token(None))  # type: ignore[arg-type]
    assert no_aud.status_code == 400 and "aud" in no_aud.json()["error_description"]


def test_readyz_names_the_live_issuer_and_warns_about_an_old_pinned_key_set(
        two: tuple[Service, FakeGitLabProcess, FakeGitLabProcess]) -> None:
    svc, _, _ = two
    ready = requests.get(svc.url + "/readyz", timeout=10)
    assert ready.status_code == 200  # a stale pinned key set still verifies: a warning, not unready
    detail = ready.json()
    assert detail["publishing"] == {"issuer": svc.url, "jwks_uri": svc.url + "/.well-known/jwks.json",
                                    "via": ["ingress"]}
    (warning,) = detail["warnings"]
    assert PINNED in warning and "pinnedMaxAgeDays=90" in warning and "200 days" in warning
    metrics = requests.get(svc.url + "/metrics", timeout=10).text
    line = next(x for x in metrics.splitlines() if x.startswith("gitlab_sts_pinned_jwks_age_seconds{"))
    assert PINNED in line and float(line.rsplit(" ", 1)[1]) >= 200 * 86400
