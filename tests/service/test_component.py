"""The CI/CD component (templates/aws-credentials.yml) and examples/gitlab-ci.yml, parsed and run for real.

The component's shell lines run in bash, as a runner would run them, against the live service (gunicorn),
which is backed by the local STS; then `aws sts get-caller-identity` (the AWS CLI) reports the role.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.testing.sts import RunningSts
from tests.service.harness import EXAMPLES, Service
from tests.service.test_aws_chain import STAGING, chain  # noqa: F401 (the module-scoped live chain fixture)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "aws-credentials.yml"
EXAMPLE = ROOT / "examples" / "gitlab-ci.yml"
INPUT = re.compile(r"\$\[\[\s*inputs\.(\w+)\s*\]\]")


def _spec_and_body() -> tuple[dict[str, Any], str]:
    header, body = TEMPLATE.read_text().split("\n---\n", 1)
    spec = yaml.safe_load(header)["spec"]
    return spec, body


def _render(inputs: dict[str, str]) -> dict[str, Any]:
    """What GitLab does with an include: defaults, options and required inputs checked, then interpolation."""
    spec, body = _spec_and_body()
    declared = spec["inputs"]
    unknown = set(inputs) - set(declared)
    assert not unknown, f"inputs the component does not declare: {unknown}"
    values = {name: str(inputs.get(name, d.get("default"))) for name, d in declared.items()}
    for name, d in declared.items():
        assert "default" in d or name in inputs, f"required input {name} missing"
        if "options" in d:
            assert values[name] in d["options"], (name, values[name])
    used = set(INPUT.findall(body))
    assert used <= set(declared), used - set(declared)
    rendered: dict[str, Any] = yaml.safe_load(INPUT.sub(lambda m: values[m.group(1)], body))
    return rendered


def test_component_uses_the_catalog_layout_and_declares_each_input() -> None:
    spec, body = _spec_and_body()
    assert TEMPLATE.parent.name == "templates"
    for name in ("role", "region", "format", "service_url", "audience"):
        assert name in spec["inputs"], name
        assert spec["inputs"][name].get("description"), name
    assert set(INPUT.findall(body)) == set(spec["inputs"])  # every input is used, none is undeclared
    job = _render({})[".gitlab-sts-aws"]
    assert job["id_tokens"] == {"GITLAB_STS_ID_TOKEN": {"aud": "https://sts.example.com"}}
    assert job["variables"]["GITLAB_STS_URL"] == "https://gitlab-sts.gitlab-sts.svc:8443"


def _includes() -> list[dict[str, Any]]:
    ci = yaml.safe_load(EXAMPLE.read_text())
    return list(ci["include"])


def test_the_example_includes_the_component_in_three_lines_and_extends_what_it_defines() -> None:
    text = EXAMPLE.read_text()
    first = text.split("include:\n", 1)[1].splitlines()
    assert first[0].strip().startswith("- component: ") and first[1].strip().startswith("inputs: {role:")
    ci = yaml.safe_load(text)
    roles = {b.spec.aws.role_arn for b in load_bindings_dir(EXAMPLES).bindings}
    defined: set[str] = set()
    for entry in _includes():
        assert re.fullmatch(r"\$CI_SERVER_FQDN/[\w./-]+/aws-credentials@\d+\.\d+\.\d+", entry["component"])
        assert entry["inputs"]["role"] in roles
        defined |= set(_render(entry["inputs"]))
    jobs = {name: job for name, job in ci.items() if isinstance(job, dict) and "script" in job}
    assert jobs
    for name, job in jobs.items():
        assert job["extends"] in defined, name
        assert "aws sts get-caller-identity" in job["script"]


def _run_job(svc: Service, sts: RunningSts, tmp_path: Path, inputs: dict[str, str],
             script: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the hidden job's before_script and a script in one bash, with the variables GitLab would set."""
    rendered = _render({"service_url": svc.url, "audience": svc.url, "ca_bundle": "", **inputs})
    (job,) = rendered.values()
    token = svc.gitlab.token(job["id_tokens"]["GITLAB_STS_ID_TOKEN"]["aud"], environment="staging",
                             environment_protected="false")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(home), "TMPDIR": str(tmp_path),
        "GITLAB_STS_ID_TOKEN": token, "AWS_ENDPOINT_URL_STS": sts.url,
        **{k: "" if v is None else str(v) for k, v in job["variables"].items()},
    }
    lines = [*job["before_script"], *script]
    return subprocess.run(["bash", "-eo", "pipefail", "-c", "\n".join(lines)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("fmt", ["env", "web-identity", "profile"])
def test_the_component_script_gets_credentials_from_the_live_service(chain: tuple[Service, RunningSts],  # noqa: F811
                                                                      tmp_path: Path, fmt: str) -> None:
    svc, sts = chain
    result = _run_job(svc, sts, tmp_path, {"role": STAGING, "format": fmt},
                      ["aws sts get-caller-identity --output text --query Arn"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith("arn:aws:sts::111122223333:assumed-role/payments-deploy-staging/")
    assert "GITLAB_STS_ID_TOKEN" not in result.stderr


def test_a_pinned_client_sha256_is_checked(chain: tuple[Service, RunningSts], tmp_path: Path) -> None:  # noqa: F811
    svc, sts = chain
    good = requests.get(svc.url + "/readyz", timeout=10).json()["client"]["sha256"]
    ok = _run_job(svc, sts, tmp_path, {"role": STAGING, "client_sha256": good},
                  ["aws sts get-caller-identity --output text --query Arn"])
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = _run_job(svc, sts, tmp_path, {"role": STAGING, "client_sha256": "0" * 64}, ["echo reached"])
    assert bad.returncode != 0
    assert "reached" not in bad.stdout


def test_the_served_client_is_login_py_with_its_digests(chain: tuple[Service, RunningSts]) -> None:  # noqa: F811
    svc, _ = chain
    source = (ROOT / "cli/src/gitlab_sts/login.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    answer = requests.get(svc.url + "/v1/client/login.py", timeout=10)
    assert answer.status_code == 200
    assert answer.content == source
    assert answer.headers["X-Gitlab-Sts-Client-Sha256"] == digest
    assert answer.headers["ETag"] == f'"sha256-{digest}"'
    assert answer.headers["Repr-Digest"].startswith("sha-256=:")
    assert answer.headers["Content-Type"].startswith("text/x-python")
    assert requests.get(svc.url + "/readyz", timeout=10).json()["client"] == {"path": "/v1/client/login.py",
                                                                              "sha256": digest}
    again = requests.get(svc.url + "/v1/client/login.py", headers={"If-None-Match": answer.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304 and not again.content
    assert "GET" in requests.post(svc.url + "/v1/client/login.py", timeout=10).headers["Allow"].split(", ")
