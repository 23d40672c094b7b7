"""Create and rotate the signing keys Secret: read, plan (core.keys.plan), write conditioned on resourceVersion;
report the key set (and a pending change of tokens.algorithm) in keys.json of the status ConfigMap."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import (
    KEYSET_FILE,
    KeyRing,
    ManagedKey,
    Plan,
    RotationPolicy,
    algorithm_switch,
    generate_key,
    parse_keyring,
    plan,
    policy_from_settings,
    render_keyring,
)
from gitlab_sts.core.settings import Settings
from gitlab_sts.core.timefmt import rfc3339
from gitlab_sts.operator.kube import ApiError, KubeClient, path_for
from gitlab_sts.operator.metrics import key_state
from gitlab_sts.operator.statusmap import StatusKey

CREATED = "created"
ROTATED = "rotated"
UNCHANGED = "unchanged"
CORRUPTED = "corrupted"
CONFLICT = "conflict"

UNPUBLISHED = "unpublished"
STATUS_KEY = "keys.json"

NewKey = Callable[..., ManagedKey]
# Publishes the planned ring's JWKS and returns the plan to write (activations held back until published),
# or None to write nothing (a brand-new key set whose JWKS could not be published).
Gate = Callable[[KeyRing, Plan, datetime], Awaitable[Plan | None]]


@dataclass(frozen=True)
class Outcome:
    """What one check of the key set did."""

    result: str
    message: str = ""
    ring: KeyRing | None = None
    plan: Plan | None = None


def policy_for(settings: Settings) -> RotationPolicy:
    """The rotation policy from settings: keys.*, tokens.maxLifetime + keys.clockSkew, tokens.algorithm."""
    return policy_from_settings(settings.tokens.algorithm, settings.keys.rotation_period,
                                settings.keys.pre_publication, settings.tokens.max_lifetime, settings.keys.clock_skew)


def ring_from_secret(secret: Mapping[str, Any]) -> KeyRing:
    """Parse the Secret's keyset.json; ConfigError (never holding key material) when it is unusable."""
    data = secret.get("data") or {}
    if not isinstance(data, Mapping) or KEYSET_FILE not in data:
        raise ConfigError(f"the Secret has no {KEYSET_FILE}")
    try:
        text = base64.b64decode(str(data[KEYSET_FILE]), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"{KEYSET_FILE} is not valid base64 UTF-8") from None
    return parse_keyring(text)


def _encoded(ring: KeyRing) -> str:
    return base64.b64encode(render_keyring(ring).encode()).decode()


def secret_body(name: str, namespace: str, ring: KeyRing) -> dict[str, Any]:
    """A new keys Secret holding the ring."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "gitlab-sts", "app.kubernetes.io/component": "keys"}},
        "data": {KEYSET_FILE: _encoded(ring)},
    }


def secret_patch(resource_version: str, ring: KeyRing) -> dict[str, Any]:
    """A merge patch that succeeds only if the Secret is still at resource_version."""
    return {"metadata": {"resourceVersion": resource_version}, "data": {KEYSET_FILE: _encoded(ring)}}


async def rotate_once(client: KubeClient, namespace: str, name: str, policy: RotationPolicy, now: datetime,
                      new_key: NewKey = generate_key, gate: Gate | None = None) -> Outcome:
    """One idempotent pass: create the Secret if missing, else apply the plan; never overwrite what cannot be read.

    A single write per pass, conditioned on the resourceVersion read, so a crash or a second operator
    at any point leaves either the old or the new key set, never a mix.
    """
    path = path_for("v1", "secrets", namespace, name)
    secret = await client.get_or_none(path)
    if secret is None:
        result = plan(KeyRing(), now, policy, new_key)
        if gate is not None:
            gated = await gate(KeyRing(), result, now)
            if gated is None:
                return Outcome(UNPUBLISHED, "the first key set is not created until its JWKS is published")
            result = gated
        try:
            await client.create(path_for("v1", "secrets", namespace), secret_body(name, namespace, result.ring))
        except ApiError as exc:
            if exc.status == 409:
                return Outcome(CONFLICT, "the Secret was created meanwhile; checking again")
            raise
        return Outcome(CREATED, f"created the key set with {', '.join(result.added)}", result.ring, result)
    try:
        ring = ring_from_secret(secret)
    except ConfigError as exc:
        return Outcome(CORRUPTED, f"Secret {namespace}/{name}: {exc}; not rotating until it is fixed or deleted")
    result = plan(ring, now, policy, new_key)
    if gate is not None:
        result = await gate(ring, result, now) or Plan(ring)
    if not result.changed:
        return Outcome(UNCHANGED, "", ring, result)
    version = str((secret.get("metadata") or {}).get("resourceVersion") or "")
    try:
        await client.merge_patch(path, secret_patch(version, result.ring))
    except ApiError as exc:
        if exc.status == 409:
            return Outcome(CONFLICT, "the Secret changed since it was read; checking again")
        raise
    parts = [f"added {', '.join(result.added)}"] if result.added else []
    parts += [f"removed {', '.join(result.removed)}"] if result.removed else []
    parts += [f"extended {', '.join(result.extended)}"] if result.extended else []
    parts += [f"shortened {', '.join(result.shortened)}"] if result.shortened else []
    return Outcome(ROTATED, "; ".join(parts + list(result.notes)), result.ring, result)


def _key_times(k: ManagedKey) -> dict[str, str]:
    return {"createdAt": rfc3339(k.created_at), "activateAt": rfc3339(k.activate_at), "retireAt": rfc3339(k.retire_at),
            "removeAt": rfc3339(k.remove_at)}


def status_document(outcome: Outcome, policy: RotationPolicy, now: datetime) -> dict[str, Any]:
    """keys.json of the status ConfigMap: which key signs, every key's windows, and a pending algorithm switch."""
    doc: dict[str, Any] = {"algorithm": policy.algorithm, "error": None, "signing": None, "algorithmSwitch": None,
                           "keys": []}
    ring = outcome.ring
    if ring is None:
        doc["error"] = outcome.message  # the Secret is unusable (never holds key material)
        return doc
    current = ring.signing_key(now)
    if current is not None:
        doc["signing"] = {"kid": current.kid, "alg": current.alg, **_key_times(current)}
    switch = algorithm_switch(ring, policy.algorithm, now)
    if switch is not None:
        doc["algorithmSwitch"] = switch.as_dict()
    doc["keys"] = [{"kid": k.kid, "alg": k.alg, "state": key_state(ring, k.kid, now), **_key_times(k)}
                   for k in ring.keys]
    return doc


class KeyStatus:
    """keys.json of the status ConfigMap (written only when it changed)."""

    def __init__(self, client: KubeClient, namespace: str, configmap: str) -> None:
        self._status = StatusKey(client, namespace, configmap, STATUS_KEY)

    async def write(self, outcome: Outcome, policy: RotationPolicy, now: datetime) -> None:
        """Record the outcome of one key check (a conflict is re-checked at once: nothing to record)."""
        if outcome.result != CONFLICT:
            await self._status.write(status_document(outcome, policy, now))
