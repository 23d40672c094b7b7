"""`gitlab-sts aws-policy`, examples/terraform and examples/cloudformation: the trust policy of core.trustpolicy
everywhere, parsed with python-hcl2, scanned with checkov's terraform framework, linted with cfn-lint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import CompiledBinding
from gitlab_sts.core.trustpolicy import trust_policy
from tests.chart import tools

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "bindings"
TERRAFORM = ROOT / "examples" / "terraform"
CFN = ROOT / "examples" / "cloudformation" / "gitlab-sts.yaml"
BIN = Path(sys.executable).parent
ISSUER = "https://sts.example.com"
ACCOUNT = "111122223333"
BINDINGS = {b.key: b for b in load_bindings_dir(EXAMPLES).bindings}


def _unq(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _aws_policy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gitlab-sts"), "aws-policy", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def _every_example() -> list[str]:
    return [a for p in sorted(EXAMPLES.glob("*.yaml")) for a in ("--binding", str(p))]


def _in_account(account: str) -> list[CompiledBinding]:
    return [b for b in BINDINGS.values() if b.spec.aws.role_arn.split(":")[4] == account]


def test_policy_is_the_operators_for_a_file_and_for_namespace_name(tmp_path: Path) -> None:
    staging = BINDINGS["team-payments/deploy-staging"]
    expected = trust_policy(staging, ISSUER, "sts.amazonaws.com")
    by_file = _aws_policy("--binding", str(EXAMPLES / "deploy-staging.yaml"), "--issuer", ISSUER, "--format", "policy",
                          cwd=tmp_path)
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout) == expected
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"issuer: {ISSUER}\ngitlab:\n  - issuer: https://gitlab.example.com\n"
                        f"    audiences: [{ISSUER}]\ntokens: {{audience: sts.amazonaws.com}}\n")
    by_key = _aws_policy("--binding", "team-payments/deploy-staging", "--bindings", str(EXAMPLES),
                         "--settings", str(settings), "--format", "policy", cwd=tmp_path)
    assert by_key.returncode == 0, by_key.stderr
    assert json.loads(by_key.stdout) == expected


def test_aws_policy_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    missing = _aws_policy("--binding", "team-payments/nope", "--bindings", str(EXAMPLES), "--issuer", ISSUER)
    assert missing.returncode == 2
    assert f"{EXAMPLES}: binding team-payments/nope: no such GitLabAWSBinding" in missing.stderr
    several = _aws_policy("--issuer", ISSUER, *_every_example())
    assert several.returncode == 2
    assert "several accounts (111122223333, 444455556666): give --account" in several.stderr
    no_issuer = _aws_policy("--binding", str(EXAMPLES / "deploy-staging.yaml"))
    assert no_issuer.returncode == 2 and "--issuer" in no_issuer.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text((EXAMPLES / "deploy-staging.yaml").read_text().replace("arn:aws:iam::", "arn:aws:iamm::"))
    bad = _aws_policy("--binding", str(broken), "--issuer", ISSUER)
    assert bad.returncode == 2
    assert f"{broken}: team-payments/deploy-staging: spec.aws.roleArn" in bad.stderr


def _heredoc_json(value: str) -> Any:
    lines = _unq(value).splitlines()
    assert lines[0].strip() == "<<-EOT" and lines[-1].strip() == "EOT"
    return json.loads("\n".join(lines[1:-1]))


def _generated_terraform(tmp_path: Path) -> Path:
    result = _aws_policy("--issuer", ISSUER, "--account", ACCOUNT, "--format", "terraform",
                         *_every_example())
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "generated"
    folder.mkdir()
    (folder / "main.tf").write_text(result.stdout)
    return folder


def test_generated_terraform_parses_and_carries_the_trust_policies(tmp_path: Path) -> None:
    parsed = hcl2.loads((_generated_terraform(tmp_path) / "main.tf").read_text())
    resources = {(_unq(kind), _unq(name)): body for block in parsed["resource"]
                 for kind, named in block.items() for name, body in named.items()}
    provider = resources[("aws_iam_openid_connect_provider", "gitlab_sts")]
    assert _unq(provider["url"]) == ISSUER
    assert [_unq(c) for c in provider["client_id_list"]] == ["sts.amazonaws.com"]
    roles = {k[1]: v for k, v in resources.items() if k[0] == "aws_iam_role"}
    expected = _in_account(ACCOUNT)
    assert len(roles) == len(expected) == 3
    for b in expected:
        role = roles[b.key.replace("/", "_").replace("-", "_")]
        assert _unq(role["name"]) == b.spec.aws.role_arn.rsplit("/", 1)[1]
        assert _heredoc_json(role["assume_role_policy"]) == trust_policy(b, ISSUER, "sts.amazonaws.com")


def _tfvars() -> dict[str, Any]:
    return hcl2.loads((TERRAFORM / "terraform.tfvars").read_text())


def test_the_terraform_module_builds_the_operators_trust_policy_for_each_example_binding() -> None:
    main = hcl2.loads((TERRAFORM / "main.tf").read_text())
    (document,) = [named['"trust"'] for block in main["data"] for kind, named in block.items()
                   if _unq(kind) == "aws_iam_policy_document"]
    (statement,) = document["statement"]
    conditions = {_unq(c["variable"]): [_unq(v) for v in c["values"]] for c in statement["condition"]}
    (role,) = [named['"binding"'] for block in main["resource"] for kind, named in block.items()
               if _unq(kind) == "aws_iam_role"]
    # A binding's status.trustPolicy given verbatim wins; otherwise the policy document below is used.
    assert role["assume_role_policy"] == \
        "${coalesce(each.value.trust_policy, data.aws_iam_policy_document.trust[each.key].json)}"
    actions = statement["actions"]
    # The module's rules, read from its source, applied to each binding of the tfvars; then compared with core.
    assert '["sts:AssumeRoleWithWebIdentity"]' in actions
    assert 'each.value.session_tags ? ["sts:TagSession"] : []' in actions
    assert 'each.value.source_identity ? ["sts:SetSourceIdentity"] : []' in actions
    assert conditions["${local.provider_host}:aud"] == ["${coalesce(each.value.audience, var.audience)}"]
    tfvars = _tfvars()
    assert _unq(tfvars["issuer"]) == ISSUER
    host = ISSUER.removeprefix("https://")
    entries = {_unq(k): {f: _unq(v) for f, v in e.items()} for k, e in tfvars["bindings"].items()}
    assert set(entries) == {b.key for b in _in_account(ACCOUNT)}  # every binding of the account, no other
    for key, entry in entries.items():
        b = BINDINGS[key]
        assert entry["role_name"] == b.spec.aws.role_arn.rsplit("/", 1)[1]
        sub = conditions["${local.provider_host}:sub"][0]
        sub = sub.replace("${each.value.namespace}", entry["namespace"]).replace("${each.value.name}", entry["name"])
        built = {
            "Action": ["sts:AssumeRoleWithWebIdentity"] + (["sts:TagSession"] if entry.get("session_tags") else [])
            + (["sts:SetSourceIdentity"] if entry.get("source_identity") else []),
            "Condition": {"StringEquals": {f"{host}:aud": entry.get("audience") or _unq(tfvars["audience"]),
                                           f"{host}:sub": sub}},
        }
        statement_core = trust_policy(b, ISSUER, "sts.amazonaws.com")["Statement"][0]
        assert built == {"Action": statement_core["Action"], "Condition": statement_core["Condition"]}, key


def _checkov_terraform(directory: Path) -> dict[str, Any]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    proc = subprocess.run([str(tools.checkov()), "-d", str(directory), "--framework", "terraform", "-o", "json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=directory)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (terraform,) = [r for r in (report if isinstance(report, list) else [report]) if r["check_type"] == "terraform"]
    return terraform  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
def test_checkov_passes_the_module_and_the_generated_terraform(tmp_path: Path) -> None:
    shutil.copytree(TERRAFORM, tmp_path / "module")
    for directory in (tmp_path / "module", _generated_terraform(tmp_path)):
        report = _checkov_terraform(directory)
        failed = [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]
        assert failed == [], directory
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] >= 5, report["summary"]
    # The scan is real: a trust policy open to any federated principal is reported.
    weak = tmp_path / "weak"
    weak.mkdir()
    (weak / "main.tf").write_text('resource "aws_iam_role" "open" {\n  name = "open"\n'
                                  '  assume_role_policy = jsonencode({Version = "2012-10-17", Statement = [{'
                                  'Effect = "Allow", Principal = {AWS = "*"}, Action = "sts:AssumeRole"}]})\n}\n')
    assert _checkov_terraform(weak)["results"]["failed_checks"]


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True, timeout=300)


def test_the_cloudformation_example_is_the_generated_one_and_lints_clean(tmp_path: Path) -> None:
    lint = _cfn_lint(CFN)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    generated = _aws_policy("--issuer", ISSUER, "--account", ACCOUNT, "--format", "cloudformation",
                            *_every_example())
    assert generated.returncode == 0, generated.stderr
    assert yaml.safe_load(CFN.read_text()) == yaml.safe_load(generated.stdout)
    template = yaml.safe_load(generated.stdout)
    roles = {r["Properties"]["RoleName"]: r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"}
    for b in _in_account(ACCOUNT):
        role = roles[b.spec.aws.role_arn.rsplit("/", 1)[1]]
        assert role["Properties"]["AssumeRolePolicyDocument"] == trust_policy(b, ISSUER, "sts.amazonaws.com")
    # cfn-lint is real: a role without its trust policy is an error.
    broken = dict(template)
    first = next(k for k, r in broken["Resources"].items() if r["Type"] == "AWS::IAM::Role")
    del broken["Resources"][first]["Properties"]["AssumeRolePolicyDocument"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert _cfn_lint(tmp_path / "broken.yaml").returncode != 0


def test_every_output_names_roles_the_bindings_name() -> None:
    # The module's role_name + role_path give back each binding's spec.aws.roleArn in this account.
    for key, entry in _tfvars()["bindings"].items():
        b = BINDINGS[_unq(key)]
        path = _unq(entry.get("role_path", '"/"'))
        assert f"arn:aws:iam::{ACCOUNT}:role{path}{_unq(entry['role_name'])}" == b.spec.aws.role_arn
    assert re.search(r'"role_arns"', (TERRAFORM / "outputs.tf").read_text())
