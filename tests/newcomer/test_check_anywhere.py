"""`gitlab-sts check` from a bindings repository: the packaged CRD, file names in errors, tag warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from gitlab_sts.core.crdschema import load_crd, packaged_crd_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "bindings"
CHART_CRD = ROOT / "charts/gitlab-sts/crds/gitlabawsbindings.yaml"
CLI = str(Path(sys.executable).parent / "gitlab-sts")


def _check(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "check", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_the_packaged_crd_is_the_charts() -> None:
    # The package carries a copy (no symlinks in the repository); edit both or this fails.
    assert packaged_crd_text() == CHART_CRD.read_text()
    assert load_crd() == load_crd(CHART_CRD)


def test_check_crd_from_a_directory_outside_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "bindings-repo"
    shutil.copytree(EXAMPLES, repo / "bindings")
    result = _check(repo, "--bindings", "bindings", "--crd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok      ") == len(list(EXAMPLES.glob("*.yaml")))
    # The schema really is applied: a field the CRD does not know is refused by name.
    doc = yaml.safe_load((repo / "bindings/deploy-staging.yaml").read_text())
    doc["spec"]["aws"]["roleArnn"] = doc["spec"]["aws"]["roleArn"]
    (repo / "bindings/deploy-staging.yaml").write_text(yaml.safe_dump(doc))
    result = _check(repo, "--bindings", "bindings", "--crd")
    assert result.returncode == 2
    assert "deploy-staging.yaml deploy-staging: CRD schema: spec.aws: Additional properties" in result.stdout


def test_crd_file_overrides_the_packaged_crd(tmp_path: Path) -> None:
    crd = yaml.safe_load(CHART_CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["required"] = [*schema["properties"]["spec"].get("required", []), "owner"]
    custom = tmp_path / "crd.yaml"
    custom.write_text(yaml.safe_dump(crd))
    result = _check(tmp_path, "--bindings", str(EXAMPLES), "--crd-file", str(custom))
    assert result.returncode == 2
    assert "'owner' is a required property" in result.stdout
    missing = _check(tmp_path, "--bindings", str(EXAMPLES), "--crd-file", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read CRD" in missing.stdout


def test_claims_errors_name_the_file(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text("{not json")
    result = _check(tmp_path, "--bindings", str(EXAMPLES), "--claims", str(claims))
    assert result.returncode == 2
    assert f"error: {claims}: not valid JSON" in result.stderr
    token = tmp_path / "job.jwt"
    token.write_text("not-a-token")
    result = _check(tmp_path, "--bindings", str(EXAMPLES), "--token", str(token))
    assert result.returncode == 2
    assert f"error: {token}: " in result.stderr
    result = _check(tmp_path, "--bindings", str(EXAMPLES), "--claims", str(tmp_path / "absent.json"))
    assert result.returncode == 2
    assert f"error: {tmp_path / 'absent.json'}: cannot read" in result.stderr


def test_session_tags_naming_no_gitlab_claim_are_warned_about(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "bindings")
    path = tmp_path / "bindings/deploy-staging.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["aws"]["sessionTags"] = ["project_path", "enviroment"]
    path.write_text(yaml.safe_dump(doc))
    result = _check(tmp_path, "--bindings", "bindings")
    assert result.returncode == 0  # legal, and the service accepts it: a warning, not an error
    assert ("warning: team-payments/deploy-staging: aws.sessionTags: 'enviroment' is not a claim GitLab sends"
            in result.stderr)
    assert "project_path" not in result.stderr
    clean = _check(ROOT, "--bindings", str(EXAMPLES))
    assert "warning" not in clean.stderr
