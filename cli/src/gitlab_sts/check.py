"""`gitlab-sts check`: the service's decision, offline, for a bindings repository's own CI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gitlab_sts.cli import PACKAGED_CRD
from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import KIND, BindingIndex
from gitlab_sts.core.claims import check_types, unknown_claim_warnings
from gitlab_sts.core.crdschema import load_crd, validate_manifest
from gitlab_sts.core.errors import ConfigError, ExchangeError
from gitlab_sts.core.exchange import explain
from gitlab_sts.core.jwtparse import parse_compact
from gitlab_sts.core.settings import GitLabInstance, Settings, parse_settings
from gitlab_sts.core.verify import VerifiedToken

EXIT_MATCH, EXIT_NO_MATCH, EXIT_INVALID = 0, 1, 2


def _claims(args: argparse.Namespace) -> dict[str, Any]:
    """The claims of --claims or --token; every error names the file."""
    if args.claims is not None:
        try:
            data = json.loads(args.claims.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.claims}: not valid JSON: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{args.claims}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{args.claims}: expected a JSON object of claims")
        return data
    try:
        text = args.token.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{args.token}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    # Offline: the signature cannot be checked here, and the check says so.
    try:
        return parse_compact(text, max_bytes=65536).claims
    except ExchangeError as exc:
        raise ValueError(f"{args.token}: {exc}") from None


def _settings(args: argparse.Namespace, issuer: str) -> Settings:
    if args.settings is not None:
        return parse_settings(args.settings.read_text(), source=str(args.settings))
    return Settings(issuer="https://sts.invalid", gitlab=(GitLabInstance(issuer=issuer, audiences=("any",),
                                                                         allow_insecure_http=True),))


def run_check(args: argparse.Namespace) -> int:
    """Validate manifests and, given claims or a token, print which binding matches and why others do not."""
    try:
        loaded = load_bindings_dir(args.bindings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    problems = [f"{b.key}: {b.error}" for b in loaded.rejected]
    crd = args.crd_file if args.crd_file is not None else args.crd
    if crd is not None:
        problems.extend(_crd_problems(args.bindings, None if crd == PACKAGED_CRD else crd))
    # A tag or source identity from a claim GitLab never sends is always empty: legal, but surely a typo.
    for b in loaded.bindings:
        for warning in unknown_claim_warnings(b.spec.aws.session_tags, b.spec.aws.source_identity):
            print(f"warning: {b.key}: {warning}", file=sys.stderr)
    if args.claims is None and args.token is None:
        if args.json:
            print(json.dumps({"valid": [b.key for b in loaded.bindings], "invalid": problems}, indent=2))
        else:
            for b in loaded.bindings:
                print(f"ok      {b.key}  ->  {b.spec.aws.role_arn}")
            for p in problems:
                print(f"INVALID {p}")
        return EXIT_INVALID if problems else EXIT_MATCH
    try:
        claims = _claims(args)
        check_types(claims)
    except (ValueError, OSError, ExchangeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    issuer = str(claims.get("iss", ""))
    try:
        settings = _settings(args, issuer)
    except OSError as exc:
        print(f"error: {args.settings}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    instance = settings.instance(issuer)
    if instance is None:
        print(f"error: issuer {issuer!r} is not trusted by the settings", file=sys.stderr)
        return EXIT_INVALID
    default_issuer = settings.gitlab[0].issuer if len(settings.gitlab) == 1 else None
    index = BindingIndex(loaded.bindings, default_issuer=default_issuer)
    rows = explain(VerifiedToken(instance=instance, claims=claims, kid=None), index, settings)
    matches = [r for r in rows if r["matches"]]
    if args.json:
        print(json.dumps({"bindings": rows, "invalid": problems}, indent=2, default=str))
    else:
        if args.token is not None:
            print("note: the token's signature was not checked (offline)")
        if not rows:
            print(f"no binding names project {claims.get('project_path')} (id {claims.get('project_id')})")
        for r in rows:
            verdict = "MATCH  " if r["matches"] else "no     "
            detail = f"-> {r['role_arn']} as {r['subject']}" if r["matches"] else r["reason"]
            print(f"{verdict} {r['binding']}: {detail}")
        for p in problems:
            print(f"INVALID {p}")
    if problems:
        return EXIT_INVALID
    return EXIT_MATCH if len(matches) == 1 else EXIT_NO_MATCH


def _crd_problems(directory: Path, crd_path: Path | None) -> list[str]:
    """Validate every GitLabAWSBinding manifest against the CRD schema the API server enforces."""
    try:
        crd = load_crd(crd_path)
    except (OSError, ValueError, ConfigError) as exc:
        return [str(exc)]
    problems: list[str] = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                name = (doc.get("metadata") or {}).get("name", f"#{i}")
                problems.extend(f"{path.name} {name}: CRD schema: {e}" for e in validate_manifest(doc, crd))
    return problems
