"""The job side agrees everywhere a reader copies from: one audience, one in-cluster service URL."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = "https://sts.example.com"
SERVICE = "https://gitlab-sts.gitlab-sts.svc:8443"
FILES = ["README.md", "docs/job-client.md", "docs/troubleshooting.md", "docs/private-gitlab.md",
         "examples/gitlab-ci.yml", "templates/aws-credentials.yml", "charts/gitlab-sts/README.md", "operator/README.md"]
# The job's ID token audience (id_tokens aud, the component's input, the service's accepted audiences).
AUD = re.compile(r"(?:\baud|\baudience|audiences\[0\])['\"]?\s*[:=]\s*\[?\s*['\"]?(https?://[^\s'\"\],]+)")
# Where jobs send it (the job client's --url; `aws iam create-open-id-connect-provider --url` is the issuer).
URL = re.compile(r"(?:GITLAB_STS_URL|service_url|login[^\n]*?--url)\s*[:= ]\s*['\"]?(https?://[^\s'\"/]+)")


@pytest.mark.parametrize("name", FILES)
def test_job_audience_and_service_url_are_the_same_everywhere(name: str) -> None:
    text = (ROOT / name).read_text()
    assert set(AUD.findall(text)) <= {AUDIENCE}, name
    assert set(URL.findall(text)) <= {SERVICE}, name


def test_the_patterns_find_what_the_readme_shows() -> None:
    readme = (ROOT / "README.md").read_text()
    assert AUDIENCE in AUD.findall(readme)
    component = (ROOT / "templates/aws-credentials.yml").read_text()
    header = yaml.safe_load(component.split("\n---\n", 1)[0])["spec"]["inputs"]
    assert header["audience"]["default"] == AUDIENCE
    assert header["service_url"]["default"] == SERVICE


def test_make_demo_installs_no_dev_extras(tmp_path: Path) -> None:
    # A dry run in a fresh venv location: what `make demo` would install, against what `make test` would.
    def plan(target: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    demo, test = plan("demo"), plan("test")
    assert "pip install" in demo and "-e ." in demo
    assert ".[dev]" not in demo
    assert ".[dev]" in test
