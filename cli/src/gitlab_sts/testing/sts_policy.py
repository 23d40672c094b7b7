"""IAM role trust policies, the subset AssumeRoleWithWebIdentity needs, evaluated like IAM (not AWS).

Supported: Effect Allow/Deny, Principal {"Federated": ARN or list} (or "*"), Action with `*`/`?`
wildcards, and Condition with StringEquals, StringNotEquals, StringLike, StringNotLike (each optionally
suffixed IfExists) over single-valued keys. Anything else is refused when the policy is loaded, so
a test never passes because an unsupported element was silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_OPERATORS = ("StringEquals", "StringNotEquals", "StringLike", "StringNotLike")
_STATEMENT_KEYS = {"Sid", "Effect", "Principal", "Action", "Condition"}


@dataclass(frozen=True)
class Condition:
    """One operator applied to one key with its allowed values (values OR together)."""

    operator: str
    key: str
    values: tuple[str, ...]
    if_exists: bool

    def holds(self, context: Mapping[str, str]) -> bool:
        """Evaluate against a context of lower-cased key names."""
        actual = context.get(self.key.lower())
        negated = self.operator.startswith("StringNot")
        if actual is None:
            # IAM: a missing key fails positive operators and satisfies negated ones and ...IfExists.
            return negated or self.if_exists
        if self.operator in ("StringEquals", "StringNotEquals"):
            hit = actual in self.values
        else:
            hit = any(_like(pattern, actual) for pattern in self.values)
        return not hit if negated else hit


@dataclass(frozen=True)
class Statement:
    """One trust policy statement."""

    effect: str
    principals: tuple[str, ...]
    actions: tuple[str, ...]
    conditions: tuple[Condition, ...]

    def applies(self, principal: str, action: str, context: Mapping[str, str]) -> bool:
        """True when principal, action and every condition match."""
        if "*" not in self.principals and principal not in self.principals:
            return False
        if not any(_like(a.lower(), action.lower()) for a in self.actions):
            return False
        return all(c.holds(context) for c in self.conditions)


@dataclass(frozen=True)
class TrustPolicy:
    """A parsed trust policy."""

    statements: tuple[Statement, ...]

    def decide(self, principal: str, actions: Sequence[str], context: Mapping[str, str]) -> str | None:
        """None if every action is allowed for the principal, else why not (for logs, never for callers)."""
        for action in actions:
            if any(s.effect == "Deny" and s.applies(principal, action, context) for s in self.statements):
                return f"an explicit Deny matched {action}"
            if not any(s.effect == "Allow" and s.applies(principal, action, context) for s in self.statements):
                return f"no Allow statement matched {action} for {principal}"
        return None


def _like(pattern: str, value: str) -> bool:
    # IAM wildcards: * any run, ? one character; everything else literal and case-sensitive.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{what} must not be empty")
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, str | int):
            out.append(str(item))
        else:
            raise ValueError(f"{what} must hold strings")
    return tuple(out)


def _principals(value: Any) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise ValueError('Principal must be "*" or a mapping such as {"Federated": ARN}')
    unknown = set(value) - {"Federated", "AWS", "Service"}
    if unknown:
        raise ValueError(f"unsupported principal type(s) {sorted(unknown)}")
    # Only Federated principals can call AssumeRoleWithWebIdentity; other kinds never match here.
    return _strings(value["Federated"], "Principal.Federated") if "Federated" in value else ()


def _conditions(value: Any) -> tuple[Condition, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("Condition must be a mapping of operator to {key: values}")
    out = []
    for op, block in value.items():
        base = op[:-len("IfExists")] if op.endswith("IfExists") else op
        if base not in _OPERATORS:
            raise ValueError(f"condition operator {op!r} is not supported by the local STS "
                             f"(supported: {', '.join(_OPERATORS)}, optionally ...IfExists)")
        if not isinstance(block, dict) or not block:
            raise ValueError(f"Condition.{op} must map keys to values")
        for key, values in block.items():
            out.append(Condition(base, str(key), _strings(values, f"Condition.{op}.{key}"),
                                 if_exists=op.endswith("IfExists")))
    return tuple(out)


def _statement(raw: Any, index: int) -> Statement:
    if not isinstance(raw, dict):
        raise ValueError(f"Statement[{index}] must be a mapping")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        # Resource is prohibited in trust policies by IAM; NotPrincipal/NotAction are not emulated.
        raise ValueError(f"Statement[{index}] has unsupported element(s) {sorted(unknown)}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise ValueError(f"Statement[{index}].Effect must be Allow or Deny")
    if "Principal" not in raw or "Action" not in raw:
        raise ValueError(f"Statement[{index}] needs Principal and Action")
    return Statement(effect=effect, principals=_principals(raw["Principal"]),
                     actions=_strings(raw["Action"], f"Statement[{index}].Action"),
                     conditions=_conditions(raw.get("Condition")))


def parse_trust_policy(raw: Any) -> TrustPolicy:
    """Parse a trust policy document, refusing elements the local STS does not emulate."""
    if not isinstance(raw, dict):
        raise ValueError("a trust policy must be a JSON object")
    if raw.get("Version", "2012-10-17") not in ("2012-10-17", "2008-10-17"):
        raise ValueError("Version must be 2012-10-17")
    statements = raw.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise ValueError("Statement must be a statement or a non-empty list of them")
    return TrustPolicy(tuple(_statement(s, i) for i, s in enumerate(statements)))
