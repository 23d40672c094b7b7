"""The service uses the operator's refreshed copy of a pinned key set (the pinned folder) over HTTP: newer than
pinnedAt wins, a corrupt file keeps the last good copy, and /readyz and the age metric follow the copy in use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from joserfc.jwk import ECKey

from gitlab_sts.core.pinnedjwks import PinnedCopy, file_name, render_copy
from tests.service.harness import FakeGitLabProcess, Service, eventually, start_service

AUD = "https://sts.test.example"
PINNED = "https://gitlab.airgap.example"
ROLE = "arn:aws:iam::111122223333:role/deploy-airgap"
SOURCE = "https://keys.internal.example/gitlab-airgap.json"
PINNED_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(days=200)

BINDING = f"""apiVersion: gitlab-sts.io/v1alpha1
kind: GitLabAWSBinding
metadata: {{name: airgap, namespace: team-payments}}
spec:
  issuer: {PINNED}
  project: {{path: platform/payments}}
  rules: {{refs: [main], protectedRef: true}}
  aws: {{roleArn: "{ROLE}"}}
"""


@dataclass
class Setup:
    svc: Service
    airgap: FakeGitLabProcess  # stands in for the air-gapped GitLab: its key signs the tokens
    pinned_dir: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake_gitlab: FakeGitLabProcess) -> Iterator[Setup]:
    airgap = FakeGitLabProcess()
    root = Path(tmp_path_factory.mktemp("pinned"))
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "airgap.yaml").write_text(BINDING)
    pinned_dir = root / "pinned"
    pinned_dir.mkdir()
    # The settings copy is an old key GitLab no longer signs with (the admin rotated it since).
    old_key = {**ECKey.generate_key("P-256").as_dict(private=False), "kid": "rotated-away"}
    gitlab = [{"issuer": fake_gitlab.issuer, "audiences": [AUD]},
              {"issuer": PINNED, "audiences": [AUD], "jwks": {"keys": [old_key]},
               "pinnedAt": PINNED_AT.strftime("%Y-%m-%dT%H:%M:%SZ"), "pinnedMaxAgeDays": 90,
               "pinnedJwksSource": SOURCE}]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITLAB_STS_PINNED_DIR", str(pinned_dir))
        svc = start_service(root / "svc", fake_gitlab, bindings=manifests, gitlab=gitlab, workers=1)
    yield Setup(svc, airgap, pinned_dir)
    svc.stop()
    airgap.stop()


def write_copy(directory: Path, name: str, text: str) -> None:
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(directory / name)  # atomic, as a ConfigMap volume update is


def readyz(svc: Service) -> dict[str, object]:
    answer = requests.get(svc.url + "/readyz", timeout=10)
    assert answer.status_code == 200, answer.text
    detail: dict[str, object] = answer.json()
    return detail


def age_metric(svc: Service) -> float:
    text = requests.get(svc.url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines()
                if x.startswith("gitlab_sts_pinned_jwks_age_seconds{") and PINNED in x)
    return float(line.rsplit(" ", 1)[1])


def test_newer_copy_from_the_operator_replaces_the_settings_copy(setup: Setup) -> None:
    svc, airgap, pinned = setup.svc, setup.airgap, setup.pinned_dir
    token = airgap.token(AUD, iss=PINNED)
    # Settings' copy: GitLab's current key is not in it, and it is 200 days old.
    refused = svc.exchange(token)
    assert refused.status_code == 400
    assert "does not publish" in refused.json()["error_description"]
    (warning,) = readyz(svc)["warnings"]  # type: ignore[misc]
    assert PINNED in warning and "200 days" in warning and "has not fetched a newer copy" in warning
    assert age_metric(svc) >= 200 * 86400

    # A copy older than pinnedAt is ignored: someone pasted a newer one into settings since.
    older = PinnedCopy(PINNED, PINNED_AT - timedelta(days=1), airgap.jwks())
    before = svc.metric("gitlab_sts_config_reloads_total", file="pinned", result="ok")
    write_copy(pinned, file_name(PINNED), render_copy(older))
    svc.reloaded("pinned", before)
    assert age_metric(svc) >= 200 * 86400 and readyz(svc)["errors"] == {}
    assert svc.exchange(token).status_code == 400

    # The operator fetched GitLab's current key set a day ago: it is used, and the warning is gone.
    fetched_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    write_copy(pinned, file_name(PINNED), render_copy(PinnedCopy(PINNED, fetched_at, airgap.jwks())))
    answer = eventually(lambda: (r := svc.exchange(airgap.token(AUD, iss=PINNED))).status_code == 200 and r)
    assert answer.json()["role_arn"] == ROLE
    detail = readyz(svc)
    assert "warnings" not in detail and detail["errors"] == {}
    assert 86400 <= age_metric(svc) < 86400 + 600


def test_corrupt_copy_keeps_the_last_good_and_an_aging_copy_warns(setup: Setup) -> None:
    svc, airgap, pinned = setup.svc, setup.airgap, setup.pinned_dir
    fetched_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    write_copy(pinned, file_name(PINNED), render_copy(PinnedCopy(PINNED, fetched_at, airgap.jwks())))
    eventually(lambda: age_metric(svc) < 7200 + 600)
    assert svc.exchange(airgap.token(AUD, iss=PINNED)).status_code == 200

    # A truncated file: the error shows in /readyz, the last good copy still verifies.
    write_copy(pinned, file_name(PINNED), '{"issuer": "' + PINNED + '", "fetchedAt": "2030-')
    errors = eventually(lambda: readyz(svc)["errors"])
    assert "pinned" in errors and file_name(PINNED) in errors["pinned"]
    assert svc.exchange(airgap.token(AUD, iss=PINNED)).status_code == 200
    assert 7200 <= age_metric(svc) < 7200 + 600

    # A copy holding a private key is refused the same way.
    private = {**ECKey.generate_key("P-256").as_dict(private=True), "kid": "leak"}
    text = render_copy(PinnedCopy(PINNED, datetime.now(UTC), {"keys": [private]}))
    write_copy(pinned, file_name(PINNED), text)
    eventually(lambda: "private key members" in str(readyz(svc)["errors"]))
    assert svc.exchange(airgap.token(AUD, iss=PINNED)).status_code == 200

    # The operator's refresh keeps failing: its last copy ages past pinnedMaxAgeDays and /readyz says so.
    stale = datetime.now(UTC).replace(microsecond=0) - timedelta(days=120)
    write_copy(pinned, file_name(PINNED), render_copy(PinnedCopy(PINNED, stale, airgap.jwks())))
    detail = eventually(lambda: (d := readyz(svc)).get("warnings") and d)
    (warning,) = detail["warnings"]
    assert "last fetched by the operator" in warning and "120 days" in warning and SOURCE in warning
    assert detail["errors"] == {}
    assert age_metric(svc) >= 120 * 86400
    assert svc.exchange(airgap.token(AUD, iss=PINNED)).status_code == 200  # still verifies: a warning only

    # The copy is removed (e.g. the ConfigMap deleted): the settings copy applies again.
    (pinned / file_name(PINNED)).unlink()
    eventually(lambda: age_metric(svc) >= 200 * 86400)
    assert svc.exchange(airgap.token(AUD, iss=PINNED)).status_code == 400
