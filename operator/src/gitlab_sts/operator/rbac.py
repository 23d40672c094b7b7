"""The operator's least-privilege RBAC, one list; the chart reads the rendered copy (files/operator-rbac.yaml).

Regenerate with `python -m gitlab_sts.operator.rbac > charts/gitlab-sts/files/operator-rbac.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

# Placeholders the chart replaces with the configured object names.
BINDINGS_CONFIGMAP = "${bindingsConfigMap}"
KEYS_SECRET = "${keysSecret}"  # noqa: S105 - a placeholder name
STATUS_CONFIGMAP = "${statusConfigMap}"
PINNED_JWKS_CONFIGMAP = "${pinnedJwksConfigMap}"


@dataclass(frozen=True)
class Rule:
    """Verbs on resources; scope says where they apply."""

    # "watched": every watched namespace (a ClusterRole, bound cluster-wide or per namespace);
    # "own": the release namespace that holds the ConfigMap and Secret (a Role).
    scope: Literal["watched", "own"]
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


RULES: tuple[Rule, ...] = (
    Rule("watched", "gitlab-sts.io", ("gitlabawsbindings",), ("get", "list", "watch"),
         why="read bindings: the operator's own listing and watch (resourceVersion-based)"),
    Rule("watched", "gitlab-sts.io", ("gitlabawsbindings/status",), ("patch",),
         why="write Ready, subject and trustPolicy into each binding's status"),
    Rule("watched", "", ("events",), ("create",),
         why="Warning events on refused bindings"),
    # create cannot be limited by resourceNames (the name is not in the URL), get/patch can.
    Rule("own", "", ("configmaps",), ("create",), why="create the bindings ConfigMap once"),
    Rule("own", "", ("configmaps",), ("get", "patch"), (BINDINGS_CONFIGMAP,),
         why="rewrite the bindings ConfigMap"),
    Rule("own", "", ("configmaps",), ("get", "patch"), (STATUS_CONFIGMAP,),
         why="the status users read with kubectl (publish.json, keys.json, pinned-jwks.json)"),
    Rule("own", "", ("configmaps",), ("get", "patch"), (PINNED_JWKS_CONFIGMAP,),
         why="refreshed copies of pinned GitLab key sets (settings gitlab[].pinnedJwksSource)"),
    Rule("own", "", ("secrets",), ("create",), why="create the keys Secret once"),
    Rule("own", "", ("secrets",), ("get", "patch"), (KEYS_SECRET,), why="rotate the signing keys"),
    Rule("own", "", ("events",), ("create",), why="the KeySetCorrupted Warning event on the keys Secret"),
    Rule("own", "coordination.k8s.io", ("leases",), ("list", "watch"),
         why="read the exchange pods' Leases: which bindings documents they serve (the Served condition)"),
)


def render(rules: tuple[Rule, ...] = RULES) -> str:
    """The YAML the chart includes: watchedRules (ClusterRole) and ownRules (Role)."""
    doc = {
        "watchedRules": [r.as_k8s() for r in rules if r.scope == "watched"],
        "ownRules": [r.as_k8s() for r in rules if r.scope == "own"],
    }
    header = ("# Generated from operator/src/gitlab_sts/operator/rbac.py (RULES); do not edit by hand.\n"
              "# Regenerate: python -m gitlab_sts.operator.rbac > charts/gitlab-sts/files/operator-rbac.yaml\n"
              f"# The chart replaces {BINDINGS_CONFIGMAP}, {KEYS_SECRET}, {STATUS_CONFIGMAP} and\n"
              f"# {PINNED_JWKS_CONFIGMAP} with the configured names.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


if __name__ == "__main__":
    print(render(), end="")
