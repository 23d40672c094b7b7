"""Publishing the issuer's documents: their content, whether a published JWKS covers the keys, and the gate
that keeps a key from signing before a JWKS holding it has been published for the lead time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gitlab_sts.core.keys import PRIVATE_MEMBERS, KeyRing, ManagedKey, Plan, RotationPolicy

DISCOVERY = "openid-configuration"
JWKS = "jwks.json"
# While a key is unpublished, push its activation this far past now + lead, so that an outage costs one
# key set write per RETRY_SLACK instead of one per check.
RETRY_SLACK = timedelta(hours=1)
CLAIMS_SUPPORTED = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti",
                    "https://aws.amazon.com/tags", "https://aws.amazon.com/source_identity")


def discovery_document(issuer: str, algorithms: Iterable[str]) -> dict[str, Any]:
    """The OIDC discovery document AWS reads from <issuer>/.well-known/openid-configuration.

    algorithms: those of the published keys (KeyRing.algorithms), so that a verifier reading the list
    accepts every token a published key signs, during an algorithm switch too.
    """
    return {
        "issuer": issuer, "jwks_uri": issuer + "/.well-known/" + JWKS, "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        # OpenID Connect Discovery 1.0 section 3 requires RS256 in this list, whatever else it holds.
        "id_token_signing_alg_values_supported": sorted({"RS256", *algorithms}),
        "claims_supported": list(CLAIMS_SUPPORTED),
    }


def render(document: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes (so that an unchanged document is never re-uploaded)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    """SHA-256 hex of some bytes."""
    return hashlib.sha256(data).hexdigest()


def documents(issuer: str, ring: KeyRing, now: datetime) -> dict[str, bytes]:
    """Both documents to publish at now, by file name; the JWKS holds every key whose publication window is open."""
    return {JWKS: render(ring.jwks(now)), DISCOVERY: render(discovery_document(issuer, ring.algorithms(now)))}


@dataclass(frozen=True)
class Coverage:
    """How a published JWKS compares with the key ring at some time."""

    published: tuple[str, ...]  # kids in the published JWKS
    missing: tuple[str, ...]  # kids that should be published and are not
    extra: tuple[str, ...]  # kids published that the ring does not hold (harmless, reported)
    signing_kid: str | None
    private_members: bool  # a published key carries private material

    @property
    def signing_published(self) -> bool:
        """Whether the key that signs now is published (or nothing signs)."""
        return self.signing_kid is None or self.signing_kid in self.published

    @property
    def matches(self) -> bool:
        """Every key that should be published is, and nothing private is."""
        return not self.missing and not self.private_members

    def as_status(self) -> dict[str, Any]:
        """The status form (camelCase, for the status ConfigMap)."""
        return {"matches": self.matches, "signingKid": self.signing_kid, "signingPublished": self.signing_published,
                "missingKids": list(self.missing), "extraKids": list(self.extra),
                "privateMembers": self.private_members}


def published_kids(jwks: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The kids of a JWKS document (empty for None or a malformed one)."""
    keys = (jwks or {}).get("keys")
    if not isinstance(keys, list):
        return ()
    return tuple(str(k["kid"]) for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str))


def coverage(jwks: Mapping[str, Any] | None, ring: KeyRing, now: datetime) -> Coverage:
    """Compare a published JWKS with the keys that must be published at now."""
    kids = published_kids(jwks)
    wanted = [k.kid for k in ring.published(now)]
    keys = (jwks or {}).get("keys")
    private = isinstance(keys, list) and any(
        isinstance(k, dict) and any(m in k for m in PRIVATE_MEMBERS) for k in keys)
    signing = ring.signing_key(now)
    return Coverage(
        published=kids, missing=tuple(k for k in wanted if k not in kids),
        extra=tuple(k for k in kids if k not in {m.kid for m in ring.keys}),
        signing_kid=signing.kid if signing else None, private_members=private,
    )


def track_published(previous: Mapping[str, datetime], seen: tuple[str, ...], at: datetime) -> dict[str, datetime]:
    """Since when each kid has been continuously in the published JWKS, after observing `seen` at `at`.

    A kid that drops out loses its history: if it comes back, its lead time starts again.
    """
    return {kid: previous.get(kid, at) for kid in seen}


def _shift(k: ManagedKey, activate: datetime, policy: RotationPolicy) -> ManagedKey:
    delta = activate - k.activate_at
    retire = k.retire_at + delta
    return replace(k, activate_at=activate, retire_at=retire, remove_at=max(k.remove_at + delta,
                                                                           retire + policy.overlap))


def gate(before: KeyRing, proposed: Plan, now: datetime, policy: RotationPolicy,
         published_since: Mapping[str, datetime], slack: timedelta = RETRY_SLACK) -> Plan:
    """Hold back every key that is not yet signing until a JWKS holding it has been published for the lead time.

    `published_since` maps a kid to when it was first seen (continuously since) in the published JWKS.
    A key that was activated in `before` is never touched (AWS has seen it; tokens may exist). A key that would start
    signing is moved, with its whole window, to published_since + lead, or, while it is unpublished, to
    now + lead + slack; the key before it keeps signing until then, so there is never a gap. A brand-new
    issuer (nothing live in `before`) has no JWKS cached anywhere, so its first key may sign as soon as it
    is published, and so may a key the plan must activate at once because nothing else can sign.
    Pure and idempotent.
    """
    activated_before = {k.kid for k in before.keys if k.activate_at <= now}
    keys = sorted(proposed.ring.keys, key=lambda k: (k.activate_at, k.kid))
    delayed: list[str] = []
    notes: list[str] = []
    out: list[ManagedKey] = []
    floor = now  # a later key never activates before an earlier one that was held back
    for k in keys:
        if k.kid in activated_before or k.remove_at <= now:
            out.append(k)
            continue
        since = published_since.get(k.kid)
        if since is None:
            required, target = now + policy.lead, now + policy.lead + slack
        elif k.activate_at <= now:
            # The plan needs it to sign now (a brand-new issuer, or no other key can sign): published is enough.
            required = target = since
        else:
            required = target = since + policy.lead
        required, target = max(required, floor), max(target, floor)
        if k.activate_at < required:
            k = _shift(k, target, policy)
            delayed.append(k.kid)
            state = "is not published yet" if since is None else "has not been published for the lead time"
            notes.append(f"{k.kid} {state}: it signs from {k.activate_at:%Y-%m-%dT%H:%M:%SZ}")
        floor = max(floor, k.activate_at)
        out.append(k)
    if not delayed:
        return proposed
    # Each key signs until the successor we held back does.
    out.sort(key=lambda k: (k.activate_at, k.kid))
    extended = list(proposed.extended)
    for i in range(len(out) - 1):
        cur, nxt = out[i], out[i + 1]
        if nxt.kid in delayed and cur.remove_at > now and cur.retire_at < nxt.activate_at:
            out[i] = replace(cur, retire_at=nxt.activate_at,
                             remove_at=max(cur.remove_at, nxt.activate_at + policy.overlap))
            extended.append(cur.kid)
    for kid in delayed:
        if kid not in extended and kid not in proposed.added:
            extended.append(kid)
    ring = KeyRing(tuple(sorted(out, key=lambda k: (k.activate_at, k.kid))))
    return Plan(ring, proposed.added, proposed.removed, tuple(dict.fromkeys(extended)), proposed.notes + tuple(notes),
                proposed.shortened)


def delayed_keys(ring: KeyRing, now: datetime, published_since: Mapping[str, datetime],
                 policy: RotationPolicy) -> list[str]:
    """Kids that are due to sign within the lead time but are not yet published long enough (status only)."""
    out = []
    for k in ring.keys:
        if k.activate_at > now:
            since = published_since.get(k.kid)
            if since is None or since + policy.lead > k.activate_at:
                out.append(k.kid)
    return out
