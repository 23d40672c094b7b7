"""examples/gitlab-ci.yml uses only variables, roles and commands that exist."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from gitlab_sts.cli import build_parser
from gitlab_sts.core.bindingdoc import load_bindings_dir

ROOT = Path(__file__).resolve().parents[2]
CI = yaml.safe_load((ROOT / "examples" / "gitlab-ci.yml").read_text())
JOBS = {name: job for name, job in CI.items() if isinstance(job, dict) and "script" in job}


def _login_commands(job: dict[str, object]) -> list[list[str]]:
    out = []
    for line in job["script"]:  # type: ignore[attr-defined]
        text = str(line)
        if "gitlab-sts login" in text:
            inner = text.split('"$(', 1)[1].rsplit(')"', 1)[0] if '"$(' in text else text
            out.append(shlex.split(inner))
    return out


def test_jobs_use_the_id_token_variable_login_reads() -> None:
    base = CI[".aws"]
    assert "GITLAB_STS_ID_TOKEN" in base["id_tokens"]
    assert isinstance(base["id_tokens"]["GITLAB_STS_ID_TOKEN"]["aud"], str)  # one aud, as AWS needs
    assert set(CI["variables"]) <= {"GITLAB_STS_URL", "GITLAB_STS_CA_BUNDLE"}
    login = (ROOT / "cli/src/gitlab_sts/login.py").read_text()
    for variable in ("GITLAB_STS_ID_TOKEN", "GITLAB_STS_URL", "GITLAB_STS_CA_BUNDLE"):
        assert variable in login


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_login_command_parses_and_names_example_roles(name: str) -> None:
    roles = {b.spec.aws.role_arn for b in load_bindings_dir(ROOT / "examples" / "bindings").bindings}
    commands = _login_commands(JOBS[name])
    assert commands, f"{name} does not call gitlab-sts login"
    for argv in commands:
        assert argv[:2] == ["gitlab-sts", "login"]
        args = build_parser().parse_args(argv[1:])
        for role in getattr(args, "role", None) or []:
            assert role in roles
