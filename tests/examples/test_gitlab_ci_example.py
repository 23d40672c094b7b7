"""The component's job uses only variables and options the job client has (tests/service/test_component.py runs it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from gitlab_sts.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
HEADER, BODY = (ROOT / "templates" / "aws-credentials.yml").read_text().split("\n---\n", 1)
SPEC = yaml.safe_load(HEADER)["spec"]["inputs"]


def test_the_component_sets_the_variables_login_reads() -> None:
    (job,) = yaml.safe_load(re.sub(r"\$\[\[\s*inputs\.(\w+)\s*\]\]", r"\1", BODY)).values()
    assert "GITLAB_STS_ID_TOKEN" in job["id_tokens"]
    assert isinstance(job["id_tokens"]["GITLAB_STS_ID_TOKEN"]["aud"], str)  # one aud, as AWS needs
    login = (ROOT / "cli/src/gitlab_sts/login.py").read_text()
    for variable in ("GITLAB_STS_ID_TOKEN", "GITLAB_STS_URL", "GITLAB_STS_CA_BUNDLE"):
        assert variable in login
        assert variable in job["variables"] or variable in job["id_tokens"]


def test_the_login_command_of_the_component_parses_for_every_format() -> None:
    (line,) = [ln for ln in BODY.splitlines() if "python3 " in ln and "--format" in ln]
    inner = line.split('"$(', 1)[1].rsplit(')"', 1)[0]
    assert not line.lstrip("- ").startswith("eval"), "eval \"$(...)\" would hide the client's exit code"
    for fmt in SPEC["format"]["options"]:
        text = inner.replace('"$GITLAB_STS_FORMAT"', fmt).replace('"$AWS_REGION"', "us-east-1")
        text = text.replace('${GITLAB_STS_ROLE:+--role "$GITLAB_STS_ROLE"}', "--role arn:aws:iam::1:role/x")
        text = text.replace('"$@"', "--profile gitlab-sts" if fmt == "profile" else "")
        argv = shlex.split(text)
        assert argv[:2] == ["python3", '$gitlab_sts_client']
        args = build_parser().parse_args(["login", *argv[2:]])
        assert args.format == fmt
