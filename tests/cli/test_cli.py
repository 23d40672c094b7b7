"""The gitlab-sts commands as a user runs them: check, serve, demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from gitlab_sts.localserver import free_port, wait_ready
from gitlab_sts.testing.gitlab import FakeGitLab, job_claims

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "bindings"
CLI = str(Path(sys.executable).parent / "gitlab-sts")


def _run(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _claims_file(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(job_claims("https://gitlab.example.com", "https://sts.example.com", **overrides)))
    return path


def test_check_validates_manifests_with_the_crd() -> None:
    result = _run("check", "--bindings", str(EXAMPLES), "--crd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 4


def test_check_reports_invalid_manifests(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: gitlab-sts.io/v1alpha1\nkind: GitLabAWSBinding\nmetadata: {name: bad, namespace: team-a}\n"
        "spec: {project: {path: a/b, id: '1'}, aws: {roleArn: 'arn:aws:iam::1:role/x'}}\n")
    result = _run("check", "--bindings", str(tmp_path), "--crd")
    assert result.returncode == 2
    assert "INVALID team-a/bad" in result.stdout
    assert "spec.project" in result.stdout and "spec.aws.roleArn" in result.stdout
    assert "CRD schema" in result.stdout  # the API server would refuse it too


def test_check_with_claims_names_the_match_and_why_not_the_others(tmp_path: Path) -> None:
    claims = _claims_file(tmp_path, environment="staging", environment_protected="false")
    result = _run("check", "--bindings", str(EXAMPLES), "--claims", str(claims))
    assert result.returncode == 0, result.stderr
    assert "MATCH   team-payments/deploy-staging" in result.stdout
    assert "team-payments/deploy-production: rules.environments" in result.stdout


def test_check_with_a_token_and_no_match(tmp_path: Path) -> None:
    gitlab = FakeGitLab()
    gitlab.issuer = "https://gitlab.example.com"
    token = gitlab.sign(job_claims(gitlab.issuer, "x", ref="feature/y", ref_protected="false",
                                   environment="production", environment_protected="true"))
    (tmp_path / "token").write_text(token)
    result = _run("check", "--bindings", str(EXAMPLES), "--token", str(tmp_path / "token"), "--json")
    assert result.returncode == 1
    rows = json.loads(result.stdout)["bindings"]
    assert not any(r["matches"] for r in rows)
    assert token not in result.stdout + result.stderr


def test_check_refuses_claims_of_the_wrong_type(tmp_path: Path) -> None:
    claims = _claims_file(tmp_path, ref_protected=True)
    result = _run("check", "--bindings", str(EXAMPLES), "--claims", str(claims))
    assert result.returncode == 2
    assert "ref_protected" in result.stderr


@pytest.mark.parametrize(("tokens", "kty", "alg"), [
    ("", "EC", "ES256"), ("tokens: {algorithm: RS256}\n", "RSA", "RS256"),
], ids=["default", "rs256"])
def test_serve_without_keys_uses_development_keys(tmp_path: Path, tokens: str, kty: str, alg: str) -> None:
    port = free_port()
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"issuer: http://127.0.0.1:{port}\ngitlab:\n  - issuer: https://gitlab.example.com\n"
                        f"    audiences: [http://127.0.0.1:{port}]\n" + tokens)
    # A temp dir of its own, to see everything the run writes there (tempfile honours TMPDIR).
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "GITLAB_STS_STATE_DIR")}
    env["TMPDIR"] = str(tmp)
    process = subprocess.Popen([CLI, "serve", "--settings", str(settings), "--bindings", str(EXAMPLES),
                                "--port", str(port), "--workers", "2"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}")
        assert ready["development_keys"] is True
        assert ready["bindings"] == 4
        jwks = requests.get(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=10).json()
        assert len(jwks["keys"]) == 1
        # The development key has the configured algorithm (ES256 unless settings say otherwise).
        assert (jwks["keys"][0]["kty"], jwks["keys"][0]["alg"]) == (kty, alg)
        # Private key material only in the run's own scratch folder (its keys/ and state/), which it removes.
        holders = [p for p in tmp.rglob("*") if p.is_file() and b'"d"' in p.read_bytes()]
        assert holders and all(p.relative_to(tmp).parts[0].startswith("gitlab-sts-dev-") for p in holders), holders
        assert not list(tmp.glob("gitlab-sts-last-good-*"))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert "development only" in stderr
    assert process.returncode == 0
    # Workers exit on SIGTERM without "--- Logging error ---" tracebacks (gunicorn's format needs process ids).
    assert "Worker exiting" in stderr
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    assert list(tmp.iterdir()) == []  # nothing left behind


@pytest.mark.timeout(120)
def test_demo_runs_every_step() -> None:
    result = _run("demo", timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 11):
        assert f"== {step}." in out
    assert "HTTP 200: binding team-payments/deploy-staging" in out
    assert 'header: {"typ": "JWT", "alg": "ES256"' in out  # the demo mints what new installations mint
    assert "HTTP 403: invalid_target" in out
    assert '"Version": 1' in out and "ASIA" in out
    assert "sts:AssumeRoleWithWebIdentity" in out
