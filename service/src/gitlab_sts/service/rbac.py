"""The exchange pods' RBAC (when exchange.followApi is on), one list; the chart reads the rendered copy.

Regenerate with `python -m gitlab_sts.service.rbac > charts/gitlab-sts/files/exchange-rbac.yaml`.
Read-only on exactly the four config objects (list and watch are limited by resourceNames because the
follower always sends a metadata.name field selector), plus the pod's own Lease (service/follow.py).
"""

from __future__ import annotations

import yaml

from gitlab_sts.core.rbac import PolicyRule as Rule

# Placeholders the chart replaces with the configured object names.
SETTINGS_CONFIGMAP = "${settingsConfigMap}"
BINDINGS_CONFIGMAP = "${bindingsConfigMap}"
PINNED_JWKS_CONFIGMAP = "${pinnedJwksConfigMap}"
KEYS_SECRET = "${keysSecret}"  # noqa: S105 - a placeholder name


RULES: tuple[Rule, ...] = (
    Rule("", ("configmaps",), ("get", "list", "watch"), (SETTINGS_CONFIGMAP, BINDINGS_CONFIGMAP, PINNED_JWKS_CONFIGMAP),
         why="follow settings, bindings and pinned key sets within a second instead of the kubelet's minute"),
    Rule("", ("secrets",), ("get", "list", "watch"), (KEYS_SECRET,),
         why="follow the signing key set (a new key state reaches every pod at once)"),
    # Lease names carry the pod name, unknown in advance: create cannot be limited by name at all, and
    # patch is limited to the Lease kind in the release namespace.
    Rule("coordination.k8s.io", ("leases",), ("create", "patch"),
         why="renew the pod's own Lease with the digest of the bindings it serves (the Served condition)"),
)


def render(rules: tuple[Rule, ...] = RULES) -> str:
    """The YAML the chart includes: the rules of the exchange Role."""
    header = ("# Generated from service/src/gitlab_sts/service/rbac.py (RULES); do not edit by hand.\n"
              "# Regenerate: python -m gitlab_sts.service.rbac > charts/gitlab-sts/files/exchange-rbac.yaml\n"
              f"# The chart replaces {SETTINGS_CONFIGMAP}, {BINDINGS_CONFIGMAP}, {PINNED_JWKS_CONFIGMAP} and\n"
              f"# {KEYS_SECRET} with the configured names.\n")
    return header + yaml.safe_dump({"rules": [r.as_k8s() for r in rules]}, sort_keys=False,
                                   default_flow_style=False)


if __name__ == "__main__":
    print(render(), end="")
