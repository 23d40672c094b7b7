"""Whether the settings admit a compiled binding: its GitLab issuer is trusted and the platform guard allows it.

The one place for both rules. The operator uses it to set a binding's Ready condition, the service uses it
when it loads bindings and again where it mints, so that a binding loaded by any path (a document written
before the guard was tightened, a manifests folder, a stale volume) never mints what the settings forbid.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from gitlab_sts.core.bindings import CompiledBinding
from gitlab_sts.core.guard import Guard
from gitlab_sts.core.settings import Settings

UNTRUSTED_ISSUER = "UntrustedIssuer"
FORBIDDEN = "Forbidden"


@dataclass(frozen=True)
class Refusal:
    """Why the settings refuse a binding: a reason word and a sentence starting with the spec field."""

    reason: str
    message: str


class Admission:
    """The trusted GitLab issuers and the compiled guard of one settings version."""

    def __init__(self, trusted_issuers: Sequence[str], guard: Guard) -> None:
        self.trusted_issuers = tuple(trusted_issuers)
        self.guard = guard

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        """Compile the admission rules of these settings."""
        return cls(tuple(g.issuer for g in settings.gitlab), Guard(settings.guard))

    def issuer_problem(self, issuer: str | None) -> Refusal | None:
        """The issuer rule: a named issuer must be trusted; none named needs exactly one trusted instance."""
        trusted = self.trusted_issuers
        if issuer is not None and issuer not in trusted:
            return Refusal(UNTRUSTED_ISSUER, f"spec.issuer: {issuer} is not a GitLab instance the settings trust "
                                             f"({', '.join(trusted)})")
        if issuer is None and len(trusted) != 1:
            return Refusal(UNTRUSTED_ISSUER,
                           f"spec.issuer: required because the settings trust {len(trusted)} GitLab instances")
        return None

    def check(self, namespace: str, issuer: str | None, role_arn: str) -> Refusal | None:
        """The issuer rule, then the guard (which namespaces may name which accounts and roles)."""
        refusal = self.issuer_problem(issuer)
        if refusal is not None:
            return refusal
        problem = self.guard.problem(namespace, role_arn)
        return Refusal(FORBIDDEN, f"spec.aws.roleArn: {problem}") if problem is not None else None

    def check_binding(self, binding: CompiledBinding) -> Refusal | None:
        """check() for a compiled binding."""
        return self.check(binding.namespace, binding.spec.issuer, binding.spec.aws.role_arn)


# Settings objects are immutable and replaced whole on reload: the last few compiled admissions are kept by
# identity so that the mint path does not recompile guard patterns per request.
_CACHE: list[tuple[Settings, Admission]] = []
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def for_settings(settings: Settings) -> Admission:
    """The Admission of these settings (compiled once per settings object)."""
    with _CACHE_LOCK:
        for cached, admission in _CACHE:
            if cached is settings:
                return admission
    admission = Admission.from_settings(settings)
    with _CACHE_LOCK:
        _CACHE.insert(0, (settings, admission))
        del _CACHE[_CACHE_SIZE:]
    return admission
