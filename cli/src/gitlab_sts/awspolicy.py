"""`gitlab-sts aws-policy`: a binding's IAM trust policy, and Terraform or CloudFormation for it, offline."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from gitlab_sts.core.awsiac import cloudformation, terraform
from gitlab_sts.core.bindingdoc import load_bindings_dir, load_manifests
from gitlab_sts.core.bindings import CompiledBinding
from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.settings import TokenSettings, parse_settings
from gitlab_sts.core.trustpolicy import trust_policy

EXIT_OK, EXIT_INVALID = 0, 2
FORMATS = ("policy", "terraform", "cloudformation")
_KEY = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^/]+")


def add_awspolicy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gitlab-sts aws-policy`."""
    parser = sub.add_parser("aws-policy", help="print a binding's IAM trust policy and Terraform/CloudFormation",
                            description=__doc__)
    parser.add_argument("--binding", action="append", required=True, metavar="FILE|NAMESPACE/NAME",
                        help="a manifest file (every binding in it), or namespace/name in --bindings (repeatable)")
    parser.add_argument("--bindings", type=Path, default=Path("."),
                        help="folder of manifests that NAMESPACE/NAME is looked up in (default: .)")
    parser.add_argument("--settings", type=Path, help="settings.yaml: issuer and tokens.audience from it")
    parser.add_argument("--issuer", help="the service's issuer URL (settings: issuer)")
    parser.add_argument("--audience", help=f"default minted aud (settings: tokens.audience; "
                                           f"default {TokenSettings().audience})")
    parser.add_argument("--format", choices=FORMATS, help="only this output (default: all three)")
    parser.add_argument("--account", help="only bindings whose role is in this AWS account")
    parser.add_argument("--no-provider", action="store_true",
                        help="leave the OIDC provider out of the Terraform/CloudFormation (it exists already)")
    parser.set_defaults(func=run_aws_policy)


def _select(args: argparse.Namespace) -> list[CompiledBinding]:
    """The bindings named by --binding, in order; ConfigError names what is missing or invalid."""
    chosen: dict[str, CompiledBinding] = {}
    folder = None
    for item in args.binding:
        path = Path(item)
        if path.is_file():
            loaded = load_manifests([path])
            bad, found = list(loaded.rejected), list(loaded.bindings)
            where = str(path)
        elif _KEY.fullmatch(item):
            folder = folder or load_bindings_dir(args.bindings)
            bad = [r for r in folder.rejected if r.key == item]
            found = [b for b in folder.bindings if b.key == item]
            where = f"{args.bindings}: binding {item}"
        else:
            raise ConfigError(f"{item}: neither a manifest file nor namespace/name")
        if bad:
            raise ConfigError("; ".join(f"{path if path.is_file() else args.bindings}: {r.key}: {r.error}"
                                        for r in bad))
        if not found:
            raise ConfigError(f"{where}: no such GitLabAWSBinding")
        for b in found:
            chosen[b.key] = b
    bindings = list(chosen.values())
    if args.account:
        bindings = [b for b in bindings if b.spec.aws.role_arn.split(":")[4] == args.account]
        if not bindings:
            raise ConfigError(f"no binding names a role in account {args.account}")
    accounts = sorted({b.spec.aws.role_arn.split(":")[4] for b in bindings})
    if len(accounts) > 1 and args.format != "policy" and not args.no_provider:
        # An IAM OIDC provider lives in one account: one stack or module per account.
        raise ConfigError(f"the bindings name roles in several accounts ({', '.join(accounts)}): "
                          "give --account, once per account")
    return bindings


def _issuer_and_audience(args: argparse.Namespace) -> tuple[str, str]:
    issuer, audience = args.issuer, args.audience
    if args.settings is not None:
        try:
            settings = parse_settings(args.settings.read_text(), source=str(args.settings))
        except OSError as exc:
            raise ConfigError(f"{args.settings}: cannot read: {exc.strerror}") from None
        issuer = issuer or settings.issuer
        audience = audience or settings.tokens.audience
    if not issuer:
        raise ConfigError("the issuer is unknown: give --issuer https://... or --settings settings.yaml")
    if not issuer.startswith("https://"):
        raise ConfigError(f"--issuer {issuer}: AWS accepts https issuers only")
    return issuer, audience or TokenSettings().audience


def run_aws_policy(args: argparse.Namespace) -> int:
    """Print the trust policy (JSON), Terraform and CloudFormation for the chosen bindings."""
    try:
        issuer, audience = _issuer_and_audience(args)
        bindings = _select(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    provider = not args.no_provider
    parts = []
    if args.format in (None, "policy"):
        for b in bindings:
            policy = json.dumps(trust_policy(b, issuer, audience), indent=2)
            parts.append(policy if args.format else f"# trust policy of {b.spec.aws.role_arn} ({b.key})\n{policy}")
    if args.format in (None, "terraform"):
        parts.append(terraform(bindings, issuer, audience, with_provider=provider))
    if args.format in (None, "cloudformation"):
        text = cloudformation(bindings, issuer, audience, with_provider=provider)
        parts.append(text if args.format else "# CloudFormation\n" + text)
    print("\n\n".join(p.rstrip("\n") for p in parts))
    return EXIT_OK
