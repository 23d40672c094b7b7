"""A Kubernetes RBAC policy rule with the reason it is granted: the one shape the operator's and the
exchange pods' least-privilege lists (operator/rbac.py, service/rbac.py) are written in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PolicyRule:
    """Verbs on resources, optionally limited to named objects; `why` is rendered as documentation."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()
    why: str = ""

    def as_k8s(self) -> dict[str, Any]:
        """The PolicyRule form."""
        out: dict[str, Any] = {"apiGroups": [self.api_group], "resources": list(self.resources),
                               "verbs": list(self.verbs)}
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out
