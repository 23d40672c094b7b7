"""Pure builders: a binding's evaluation (compile, issuer, guard), its status and its rejection event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The admission reasons are condition reasons too (re-exported for the operator's callers).
from gitlab_sts.core.admission import FORBIDDEN as FORBIDDEN
from gitlab_sts.core.admission import UNTRUSTED_ISSUER as UNTRUSTED_ISSUER
from gitlab_sts.core.admission import Admission
from gitlab_sts.core.bindingdoc import entry_text
from gitlab_sts.core.bindings import API_VERSION, KIND, CompiledBinding, ProjectSelector, compile_binding, subject_for
from gitlab_sts.core.errors import CompileError
from gitlab_sts.core.guard import Guard
from gitlab_sts.core.settings import Settings
from gitlab_sts.core.timefmt import rfc3339
from gitlab_sts.core.trustpolicy import trust_policy

READY = "Ready"
COMPILED = "Compiled"
INVALID_SPEC = "InvalidSpec"
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Context:
    """What evaluation needs from settings.yaml."""

    issuer: str
    default_audience: str
    trusted_issuers: tuple[str, ...]
    guard: Guard = field(default_factory=lambda: Guard(()))

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        """Take our issuer, the token audience, the trusted GitLab issuers and the guard."""
        return cls(issuer=settings.issuer, default_audience=settings.tokens.audience,
                   trusted_issuers=tuple(g.issuer for g in settings.gitlab), guard=Guard(settings.guard))

    @property
    def admission(self) -> Admission:
        """The issuer rule and the guard, as the service applies them (core.admission)."""
        return Admission(self.trusted_issuers, self.guard)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome for one binding at one generation: its verdict and the texts that follow from it.

    Kept for every binding, so it holds no compiled program (a CEL parse tree is ~50 KiB): only the
    verdict, the document entry and trust policy as compact JSON text, and a digest of the spec.
    """

    namespace: str
    name: str
    generation: int
    spec_digest: bytes
    reason: str
    message: str
    project: str = ""
    entry: str | None = None  # canonical JSON of the bindings-document entry; None when not ready
    policy: str | None = None  # the trust policy as compact JSON

    @property
    def trust_policy(self) -> dict[str, Any] | None:
        """The IAM trust policy the role needs (None when the binding is not ready)."""
        return None if self.policy is None else dict(json.loads(self.policy))

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return (self.namespace, self.name)

    @property
    def ready(self) -> bool:
        """Whether the binding goes into the service's config."""
        return self.entry is not None

    @property
    def subject(self) -> str:
        """The minted sub for this binding."""
        return subject_for(self.namespace, self.name)


def spec_digest(spec: Any) -> bytes:
    """A stable hash of a raw spec (detects changes without recompiling)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).digest()


def project_label(spec: Any) -> str:
    """A short display of the project selector (for the printer column), best effort on bad specs."""
    sel = spec.get("project") if isinstance(spec, Mapping) else None
    if isinstance(sel, ProjectSelector):
        sel = sel.model_dump(exclude_none=True)
    if not isinstance(sel, Mapping):
        return ""
    if sel.get("path"):
        return str(sel["path"])
    if sel.get("id"):
        return f"id:{sel['id']}"
    if sel.get("namespace"):
        return f"{str(sel['namespace']).rstrip('/')}/**"
    return ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def evaluate(namespace: str, name: str, spec: Any, generation: int, ctx: Context) -> Evaluation:
    """Compile a binding and apply the settings (trusted issuers, platform guard) to it."""
    digest = spec_digest(spec)
    label = project_label(spec)

    def outcome(reason: str, message: str, compiled: CompiledBinding | None = None,
                policy: dict[str, Any] | None = None) -> Evaluation:
        return Evaluation(namespace, name, generation, digest, reason, _clip(message), label,
                          None if compiled is None else entry_text(compiled),
                          None if policy is None else json.dumps(policy, separators=(",", ":")))

    if not isinstance(spec, Mapping):
        return outcome(INVALID_SPEC, "spec: must be a mapping")
    try:
        compiled = compile_binding(namespace, name, spec)
    except CompileError as exc:
        return outcome(INVALID_SPEC, str(exc))
    refusal = ctx.admission.check_binding(compiled)
    if refusal is not None:
        return outcome(refusal.reason, refusal.message)
    policy = trust_policy(compiled, ctx.issuer, ctx.default_audience)
    return outcome(COMPILED, f"in the exchange service's config; the role must trust sub {compiled.subject} "
                             "(see status.trustPolicy)", compiled, policy)


def condition_of(status: Any, kind: str) -> Mapping[str, Any] | None:
    """The condition of that type in a status, if any."""
    if not isinstance(status, Mapping):
        return None
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


def _ready_condition(status: Any) -> Mapping[str, Any] | None:
    return condition_of(status, READY)


def desired_status(ev: Evaluation, current: Any, now: datetime,
                   served: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status the binding should have; lastTransitionTime moves only when Ready flips.

    served: the Served condition (operator/served.py), when the operator tracks what the exchange pods serve.
    """
    flag = "True" if ev.ready else "False"
    previous = _ready_condition(current)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == flag else None
    conditions: list[dict[str, Any]] = [{
        "type": READY, "status": flag, "reason": ev.reason, "message": ev.message,
        "observedGeneration": ev.generation, "lastTransitionTime": since or rfc3339(now),
    }]
    if served is not None:
        conditions.append(dict(served))
    return {
        "observedGeneration": ev.generation,
        "conditions": conditions,
        "subject": ev.subject,
        "project": ev.project,
        "trustPolicy": ev.trust_policy,  # None removes it (merge patch) when the binding is not ready
    }


def status_patch(current: Any, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch for .status, or None when the binding already shows the desired status."""
    current = current if isinstance(current, Mapping) else {}
    changed = {k: v for k, v in desired.items() if current.get(k) != v}
    if not changed:
        return None
    # Conditions are a list: a merge patch replaces it whole, so always send the whole desired list.
    return {"status": dict(desired)}


def rejected_anew(ev: Evaluation, current: Any) -> bool:
    """Whether a not-ready evaluation differs from what the status already says (so an event is due)."""
    if ev.ready:
        return False
    previous = _ready_condition(current)
    return not (previous and previous.get("status") == "False" and previous.get("reason") == ev.reason
                and previous.get("message") == ev.message
                and previous.get("observedGeneration") == ev.generation)


def rejection_event(obj: Mapping[str, Any], ev: Evaluation, now: datetime, component: str) -> dict[str, Any]:
    """A core/v1 Event (type Warning) telling why a binding was refused."""
    meta = obj.get("metadata") or {}
    stamp = rfc3339(now)
    uid = str(meta.get("uid") or "")
    suffix = hashlib.sha256(f"{uid}{ev.generation}{ev.message}{stamp}".encode()).hexdigest()[:10]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ev.name[:200]}.{suffix}", "namespace": ev.namespace},
        "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "namespace": ev.namespace, "name": ev.name,
                           "uid": uid, "resourceVersion": str(meta.get("resourceVersion") or "")},
        "type": "Warning",
        "reason": ev.reason,
        "message": ev.message[:1000],
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": component,
    }
