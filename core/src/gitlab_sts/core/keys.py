"""The signing key set: its file format, which key signs when, and the rotation plan."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.timefmt import TimestampError, parse_rfc3339, rfc3339

KEYSET_FILE = "keyset.json"
# AWS caches JWKS for an undocumented time; a key must be published this long before it signs.
MIN_LEAD = timedelta(hours=1)
# JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2, §6.4): never published.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

SigningKey = RSAKey | ECKey


def _parserfc3339(value: Any, what: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except TimestampError as exc:
        raise ConfigError(f"{what} {exc}") from None


@dataclass(frozen=True)
class ManagedKey:
    """One private signing key and its publication and signing windows."""

    key: SigningKey = field(repr=False)
    created_at: datetime
    activate_at: datetime
    retire_at: datetime
    remove_at: datetime

    @property
    def kid(self) -> str:
        """The key id (RFC 7638 thumbprint)."""
        return str(self.key.kid)

    @property
    def alg(self) -> str:
        """The JWS algorithm this key signs with."""
        return str(self.key.alg)

    def published(self, now: datetime) -> bool:
        """Whether the key belongs in the public JWKS at now."""
        return self.created_at <= now < self.remove_at

    def signing(self, now: datetime) -> bool:
        """Whether the key may sign at now."""
        return self.activate_at <= now < self.retire_at

    def public_jwk(self) -> dict[str, Any]:
        """Public members only, with use and alg."""
        data = self.key.as_dict(private=False)
        for member in PRIVATE_MEMBERS:  # defence in depth: never let a private member through
            data.pop(member, None)
        data["use"] = "sig"
        data["alg"] = self.alg
        data["kid"] = self.kid
        return data


@dataclass(frozen=True)
class KeyRing:
    """All managed keys, ordered by activation time."""

    keys: tuple[ManagedKey, ...] = ()

    def signing_key(self, now: datetime) -> ManagedKey | None:
        """The newest key whose signing window is open at now."""
        open_keys = [k for k in self.keys if k.signing(now)]
        return max(open_keys, key=lambda k: (k.activate_at, k.kid)) if open_keys else None

    def published(self, now: datetime) -> list[ManagedKey]:
        """Every key whose publication window is open at now."""
        return [k for k in self.keys if k.published(now)]

    def jwks(self, now: datetime) -> dict[str, Any]:
        """The public JWKS document at now."""
        return {"keys": [k.public_jwk() for k in self.published(now)]}

    def algorithms(self, now: datetime) -> list[str]:
        """The algorithms of every key published at now, sorted (what discovery must list)."""
        return sorted({k.alg for k in self.published(now)})


@dataclass(frozen=True)
class AlgorithmSwitch:
    """tokens.algorithm names another algorithm than the signing key's: when a key of it takes over."""

    algorithm: str  # the configured one
    signing: ManagedKey  # signs now, with another algorithm
    successor: ManagedKey | None  # the first key of the configured algorithm to sign; None until one exists

    @property
    def at(self) -> datetime | None:
        """When the successor starts signing (None while there is none)."""
        return self.successor.activate_at if self.successor else None

    def as_dict(self) -> dict[str, Any]:
        """The form /readyz and the operator's status show (at: RFC 3339, or None while no key exists)."""
        return {"from": self.signing.alg, "to": self.algorithm, "kid": self.successor.kid if self.successor else None,
                "at": rfc3339(self.successor.activate_at) if self.successor else None, "message": self.message()}

    def message(self) -> str:
        """One sentence for logs, /readyz and the operator's status."""
        old = f"{self.signing.alg} key {self.signing.kid}"
        if self.successor is None:
            return (f"tokens.algorithm is {self.algorithm} but no {self.algorithm} key exists yet: {old} signs "
                    f"until the operator has published one for keys.prePublication")
        return (f"tokens.algorithm is {self.algorithm}: {old} signs until {rfc3339(self.successor.activate_at)}, "
                f"then {self.algorithm} key {self.successor.kid} (published since "
                f"{rfc3339(self.successor.created_at)})")


def algorithm_switch(ring: KeyRing, algorithm: str, now: datetime) -> AlgorithmSwitch | None:
    """The pending switch to algorithm, or None when the key signing at now already uses it (or none signs)."""
    current = ring.signing_key(now)
    if current is None or current.alg == algorithm:
        return None
    for t in sorted({k.activate_at for k in ring.keys if k.activate_at > now}):
        key = ring.signing_key(t)
        if key is not None and key.alg == algorithm:
            return AlgorithmSwitch(algorithm, current, key)
    return AlgorithmSwitch(algorithm, current, None)


def generate_key(alg: str, *, created_at: datetime, activate_at: datetime, retire_at: datetime,
                 remove_at: datetime) -> ManagedKey:
    """Create a fresh private key whose kid is its RFC 7638 thumbprint."""
    key: SigningKey
    if alg == "RS256":
        key = RSAKey.generate_key(2048, private=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", private=True)
    else:
        raise ValueError(f"unsupported signing algorithm {alg}")
    data = key.as_dict(private=True)
    data.update(kid=key.thumbprint(), alg=alg, use="sig")
    imported = _import(data, "generated key")
    return ManagedKey(imported, created_at, activate_at, retire_at, remove_at)


def _import(jwk: dict[str, Any], what: str) -> SigningKey:
    kty = jwk.get("kty")
    alg = jwk.get("alg")
    try:
        if kty == "RSA" and alg == "RS256":
            key: SigningKey = RSAKey.import_key(jwk)
        elif kty == "EC" and alg == "ES256" and jwk.get("crv") == "P-256":
            key = ECKey.import_key(jwk)
        else:
            raise ConfigError(f"{what}: only RSA/RS256 and EC P-256/ES256 keys are supported")
    except ConfigError:
        raise
    except Exception:  # joserfc raises several types; the message may hold key material
        raise ConfigError(f"{what}: not a valid private JWK") from None
    if not key.is_private:
        raise ConfigError(f"{what}: the JWK has no private part")
    if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
        raise ConfigError(f"{what}: the JWK needs a kid")
    return key


def parse_keyring(text: str, source: str = KEYSET_FILE) -> KeyRing:
    """Parse keyset.json, raising ConfigError (never echoing key material)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        raise ConfigError(f"{source}: not valid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f"{source}: expected an object with a 'keys' list")
    keys = []
    kids: set[str] = set()
    for i, entry in enumerate(data["keys"]):
        what = f"{source}: keys[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("jwk"), dict):
            raise ConfigError(f"{what}: expected an object with a 'jwk'")
        key = _import(entry["jwk"], what)
        managed = ManagedKey(
            key,
            _parserfc3339(entry.get("createdAt"), f"{what}.createdAt"),
            _parserfc3339(entry.get("activateAt"), f"{what}.activateAt"),
            _parserfc3339(entry.get("retireAt"), f"{what}.retireAt"),
            _parserfc3339(entry.get("removeAt"), f"{what}.removeAt"),
        )
        if not managed.created_at <= managed.activate_at <= managed.retire_at <= managed.remove_at:
            raise ConfigError(f"{what}: needs createdAt <= activateAt <= retireAt <= removeAt")
        if managed.kid in kids:
            raise ConfigError(f"{what}: duplicate kid {managed.kid}")
        kids.add(managed.kid)
        keys.append(managed)
    return KeyRing(tuple(sorted(keys, key=lambda k: (k.activate_at, k.kid))))


def render_keyring(ring: KeyRing) -> str:
    """Serialise a key ring deterministically (holds private keys: for the Secret only)."""
    entries = []
    for k in sorted(ring.keys, key=lambda k: (k.activate_at, k.kid)):
        jwk = k.key.as_dict(private=True)
        jwk.update(kid=k.kid, alg=k.alg, use="sig")
        entries.append({
            "jwk": jwk, "createdAt": rfc3339(k.created_at), "activateAt": rfc3339(k.activate_at),
            "retireAt": rfc3339(k.retire_at), "removeAt": rfc3339(k.remove_at),
        })
    return json.dumps({"keys": entries}, sort_keys=True, indent=2) + "\n"


@dataclass(frozen=True)
class RotationPolicy:
    """How often keys rotate and how long each is published around its signing window."""

    algorithm: str = "ES256"
    period: timedelta = timedelta(days=7)
    lead: timedelta = timedelta(hours=24)
    # Longest minted token lifetime plus clock skew: how long a retired key stays published.
    overlap: timedelta = timedelta(hours=1, minutes=5)

    def __post_init__(self) -> None:
        if self.lead < MIN_LEAD:
            raise ValueError("the pre-publication lead must be at least one hour")
        if self.period <= timedelta(0) or self.overlap < timedelta(0):
            raise ValueError("period must be positive and overlap non-negative")


@dataclass(frozen=True)
class Plan:
    """The key ring to write and what changed, from plan()."""

    ring: KeyRing
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    extended: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # Keys whose signing window was cut short because a key of a newly configured algorithm takes over.
    shortened: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the ring differs from the input."""
        return bool(self.added or self.removed or self.extended or self.shortened)


def plan(ring: KeyRing, now: datetime, policy: RotationPolicy,
         new_key: Any = generate_key) -> Plan:
    """Decide the next key ring: drop expired keys, keep one signing and one published ahead.

    A key of policy.algorithm takes over from a key of another type through the same lifecycle as a
    rotation: published now, signing from now + lead; the old key signs until then and stays published
    for the overlap after. Pure apart from key generation (injectable); safe to run again at any time
    (idempotent).
    """
    notes: list[str] = []
    removed = [k.kid for k in ring.keys if k.remove_at <= now]
    keys = [k for k in ring.keys if k.remove_at > now]
    added: list[str] = []
    extended: list[str] = []
    shortened: list[str] = []

    def make(activate: datetime) -> ManagedKey:
        retire = activate + policy.period
        key: ManagedKey = new_key(policy.algorithm, created_at=now, activate_at=activate,
                                  retire_at=retire, remove_at=retire + policy.overlap)
        added.append(key.kid)
        return key

    def extend(k: ManagedKey, retire: datetime) -> ManagedKey:
        extended.append(k.kid)
        return replace(k, retire_at=retire, remove_at=max(k.remove_at, retire + policy.overlap))

    current = KeyRing(tuple(keys)).signing_key(now)
    if current is None:
        published = [k for k in keys if k.published(now) and k.activate_at <= now]
        if published:
            # Nothing may sign (operator was down): the newest key AWS has already seen signs again.
            newest = max(published, key=lambda k: (k.activate_at, k.kid))
            current = extend(newest, now + policy.lead)
            keys = [current if k.kid == newest.kid else k for k in keys]
            notes.append(f"no key could sign; extended {newest.kid} for the lead time")
        else:
            pending = [k for k in keys if k.activate_at > now]
            if pending:
                # Published but not yet due: better sign early with it than not at all.
                early = min(pending, key=lambda k: (k.activate_at, k.kid))
                current = replace(early, activate_at=max(now, early.created_at))
                keys = [current if k.kid == early.kid else k for k in keys]
                extended.append(early.kid)
                notes.append(f"no key could sign; activated {early.kid} early")
            else:
                # Bootstrap: a brand-new issuer has no JWKS cached anywhere, so the key signs at once.
                current = make(now)
                keys.append(current)
                notes.append("bootstrapped the first signing key")
    # tokens.algorithm changed: a waiting key of another type has signed nothing and never will (it would
    # switch back when it activated), so it goes; AWS may have cached it, which costs nothing.
    stale = [k for k in keys if k.activate_at > now and k.alg != policy.algorithm and k.kid != current.kid]
    if stale:
        keys = [k for k in keys if k not in stale]
        removed += [k.kid for k in stale]
        notes.append(f"dropped {', '.join(k.kid for k in stale)}: not yet signing and not {policy.algorithm}")
    # Keys that may still take over from the current one (a newer key that already retired cannot).
    horizon = max(now, current.activate_at)
    if current.alg != policy.algorithm and not any(k.activate_at > horizon for k in keys):
        # The switch is a rotation that starts now, not at the current key's retirement: the new key is
        # published now and signs after the lead; the current key signs until then.
        successor = make(now + policy.lead)
        keys.append(successor)
        if current.retire_at > successor.activate_at:
            cut = replace(current, retire_at=successor.activate_at,
                          remove_at=successor.activate_at + policy.overlap)
            keys = [cut if k.kid == current.kid else k for k in keys]
            shortened.append(current.kid)
            current = cut
        notes.append(f"tokens.algorithm is {policy.algorithm}: {successor.kid} signs from "
                     f"{rfc3339(successor.activate_at)}; {current.kid} ({current.alg}) signs until then")
    if not any(k.activate_at > horizon for k in keys):
        activate = max(current.retire_at, now + policy.lead)
        keys.append(make(activate))
    nxt = min((k for k in keys if k.activate_at > horizon), key=lambda k: k.activate_at, default=None)
    if nxt is not None and current.retire_at < nxt.activate_at:
        # Never leave a gap with no signing key: the current key signs until its successor does.
        updated = extend(current, nxt.activate_at)
        keys = [updated if k.kid == current.kid else k for k in keys]
    ring_out = KeyRing(tuple(sorted(keys, key=lambda k: (k.activate_at, k.kid))))
    return Plan(ring_out, tuple(added), tuple(removed), tuple(extended), tuple(notes), tuple(shortened))


def policy_from_settings(algorithm: str, period_s: int, lead_s: int, max_lifetime_s: int,
                         skew_s: int) -> RotationPolicy:
    """Build the rotation policy from settings values in seconds."""
    return RotationPolicy(
        algorithm=algorithm, period=timedelta(seconds=period_s), lead=timedelta(seconds=lead_s),
        overlap=timedelta(seconds=max_lifetime_s + skew_s),
    )


def development_ring(now: datetime, algorithm: str = "ES256",
                     lifetime: timedelta = timedelta(days=365)) -> KeyRing:
    """One key that signs at once, for `gitlab-sts serve` without --keys (development only)."""
    key = generate_key(algorithm, created_at=now, activate_at=now, retire_at=now + lifetime,
                       remove_at=now + lifetime + timedelta(hours=2))
    return KeyRing((key,))


def kids(keys: Sequence[ManagedKey]) -> list[str]:
    """The kids of some keys."""
    return [k.kid for k in keys]
