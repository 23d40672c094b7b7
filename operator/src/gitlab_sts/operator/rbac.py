"""The operator's least-privilege RBAC, one list; the chart reads the rendered copy (files/operator-rbac.yaml).

Regenerate with `python -m gitlab_sts.operator.rbac > charts/gitlab-sts/files/operator-rbac.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import yaml

from gitlab_sts.core.rbac import PolicyRule

# Placeholders the chart replaces with the configured object names.
BINDINGS_CONFIGMAP = "${bindingsConfigMap}"
KEYS_SECRET = "${keysSecret}"  # noqa: S105 - a placeholder name
STATUS_CONFIGMAP = "${statusConfigMap}"
PINNED_JWKS_CONFIGMAP = "${pinnedJwksConfigMap}"


@dataclass(frozen=True)
class Rule(PolicyRule):
    """A policy rule and where it applies."""

    # "watched": every watched namespace (a ClusterRole, bound cluster-wide or per namespace);
    # "own": the release namespace that holds the ConfigMap and Secret (a Role).
    scope: Literal["watched", "own"] = field(default="own", kw_only=True)


RULES: tuple[Rule, ...] = (
    Rule("gitlab-sts.io", ("gitlabawsbindings",), ("get", "list", "watch"),
         scope="watched", why="read bindings: the operator's own listing and watch (resourceVersion-based)"),
    Rule("gitlab-sts.io", ("gitlabawsbindings/status",), ("patch",),
         scope="watched", why="write Ready, subject and trustPolicy into each binding's status"),
    Rule("", ("events",), ("create",),
         scope="watched", why="Warning events on refused bindings"),
    # create cannot be limited by resourceNames (the name is not in the URL), get/patch can.
    Rule("", ("configmaps",), ("create",), scope="own", why="create the bindings ConfigMap once"),
    Rule("", ("configmaps",), ("get", "patch"), (BINDINGS_CONFIGMAP,),
         scope="own", why="rewrite the bindings ConfigMap"),
    Rule("", ("configmaps",), ("get", "patch"), (STATUS_CONFIGMAP,),
         scope="own", why="the status users read with kubectl (publish.json, keys.json, pinned-jwks.json)"),
    Rule("", ("configmaps",), ("get", "patch"), (PINNED_JWKS_CONFIGMAP,),
         scope="own", why="refreshed copies of pinned GitLab key sets (settings gitlab[].pinnedJwksSource)"),
    Rule("", ("secrets",), ("create",), scope="own", why="create the keys Secret once"),
    Rule("", ("secrets",), ("get", "patch"), (KEYS_SECRET,), scope="own", why="rotate the signing keys"),
    Rule("", ("events",), ("create",), scope="own", why="the KeySetCorrupted Warning event on the keys Secret"),
    Rule("coordination.k8s.io", ("leases",), ("list", "watch"),
         scope="own", why="read the exchange pods' Leases: which bindings documents they serve (the Served condition)"),
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
