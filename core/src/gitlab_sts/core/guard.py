"""The platform guard: which AWS accounts and roles the bindings of which namespaces may name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.patterns import glob_to_regex
from gitlab_sts.core.settings import GuardRule


@dataclass(frozen=True)
class _CompiledRule:
    index: int
    namespaces: tuple[re.Pattern[str], ...]
    accounts: frozenset[str]
    role_arns: tuple[re.Pattern[str], ...]
    source: GuardRule

    def covers(self, namespace: str) -> bool:
        return any(rx.fullmatch(namespace) for rx in self.namespaces)

    def allows(self, role_arn: str) -> bool:
        parts = role_arn.split(":")
        account = parts[4] if len(parts) > 4 else ""
        if self.accounts and account not in self.accounts:
            return False
        return not self.role_arns or any(rx.fullmatch(role_arn) for rx in self.role_arns)


class Guard:
    """Compiled guard rules from settings.guard.

    No rules: every binding passes. With rules, fail closed: a binding passes only when some rule
    whose namespaces match its namespace allows its role (accounts and roleArns, each when given).
    Patterns are the binding globs: `*` within a segment, `**` across `/`.
    """

    def __init__(self, rules: Iterable[GuardRule]) -> None:
        self._rules: list[_CompiledRule] = []
        for i, rule in enumerate(rules):
            self._rules.append(_CompiledRule(
                i, _compile(rule.namespaces, f"guard[{i}].namespaces"), frozenset(rule.accounts),
                _compile(rule.role_arns, f"guard[{i}].roleArns"), rule))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def problem(self, namespace: str, role_arn: str) -> str | None:
        """Say why the guard refuses this namespace/role pair, or None when it allows it."""
        if not self._rules:
            return None
        applicable = [r for r in self._rules if r.covers(namespace)]
        if not applicable:
            return f"namespace {namespace} is not covered by any platform guard rule (settings guard)"
        if any(r.allows(role_arn) for r in applicable):
            return None
        allowed = "; ".join(_describe(r.source) for r in applicable)
        return f"role {role_arn} is not allowed for namespace {namespace} by the platform guard ({allowed})"


def _compile(patterns: Iterable[str], where: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for p in patterns:
        try:
            out.append(glob_to_regex(p))
        except ValueError as exc:
            raise ConfigError(f"{where}: bad pattern {p!r}: {exc}") from None
    return tuple(out)


def _describe(rule: GuardRule) -> str:
    parts = []
    if rule.accounts:
        parts.append(f"accounts {list(rule.accounts)}")
    if rule.role_arns:
        parts.append(f"roles {list(rule.role_arns)}")
    return " and ".join(parts) or "any role"
