"""Verification of GitLab ID tokens against a trusted instance's key set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc.jwk import ECKey, KeySet, RSAKey

from gitlab_sts.core.claims import check_types
from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.jose import verify_signature
from gitlab_sts.core.jwtparse import parse_compact
from gitlab_sts.core.settings import GitLabInstance, Settings

# Header members that point at key material or change processing; a GitLab token never has them.
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64", "zip", "enc")
_KTY_FOR_ALG = {"RS": "RSA", "ES": "EC"}
_LEGACY_SUB = re.compile(r"job_[0-9]+")


class KeySource(Protocol):
    """Gives the current key set of a trusted GitLab instance (cached by the caller)."""

    def key_set(self, instance: GitLabInstance) -> KeySet:
        """Return the cached key set, fetching when needed; raise TemporarilyUnavailable."""

    def refresh(self, instance: GitLabInstance) -> KeySet | None:
        """Keys fetched after this call (an unknown kid); None for a pinned set; raise TemporarilyUnavailable."""


@dataclass(frozen=True)
class VerifiedToken:
    """A GitLab token whose signature, issuer, audience and times all checked out."""

    instance: GitLabInstance
    claims: dict[str, Any]
    kid: str | None
    legacy: bool = False  # a CI_JOB_JWT (legacyJobJwt): bare-host iss, no aud


def _pick_key(keys: KeySet, kid: str | None, alg: str) -> RSAKey | ECKey | None:
    kty = _KTY_FOR_ALG[alg[:2]]
    if kid is not None:
        for key in keys.keys:
            if key.kid == kid:
                if key.key_type != kty or key.get("use", "sig") != "sig":
                    return None
                return key  # type: ignore[return-value]
        return None
    usable = [k for k in keys.keys if k.key_type == kty and k.get("use", "sig") == "sig"]
    # Without a kid the choice must be unambiguous.
    return usable[0] if len(usable) == 1 else None  # type: ignore[return-value]


def verify_gitlab_token(
    token: str, *, settings: Settings, keys: KeySource, now: float
) -> VerifiedToken:
    """Check a GitLab ID token fully, or raise InvalidRequest saying why."""
    limits = settings.tokens
    parsed = parse_compact(token, max_bytes=limits.max_token_bytes)
    header, unverified = parsed.header, parsed.claims

    iss = unverified.get("iss")
    instance = settings.instance(iss) if isinstance(iss, str) else None
    # The original CI_JOB_JWT names only the host; accepted only where settings opt in (legacyJobJwt).
    legacy = False
    if instance is None and isinstance(iss, str):
        instance = settings.legacy_instance(iss)
        legacy = instance is not None
    if instance is None:
        # Only issuers from settings are ever contacted; an unknown iss is refused offline.
        raise InvalidRequest("the token's issuer is not a trusted GitLab instance", reason="untrusted_issuer")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in instance.algorithms:
        raise InvalidRequest(
            f"token algorithm {alg!r} is not allowed (allowed: {', '.join(instance.algorithms)})",
            reason="bad_algorithm",
        )
    present = [h for h in _FORBIDDEN_HEADERS if h in header]
    if present:
        raise InvalidRequest(
            f"token header carries unsupported members: {', '.join(present)}", reason="bad_header"
        )
    # Presence, not truthiness: a JSON null typ or kid is malformed (joserfc refuses it later as a
    # "bad signature", which would mislead whoever reads the denial).
    typ = header.get("typ")
    if "typ" in header and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise InvalidRequest("token header 'typ' must be JWT", reason="bad_header")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise InvalidRequest("token header 'kid' must be a string", reason="bad_header")

    key_set = keys.key_set(instance)
    key = _pick_key(key_set, kid, alg)
    if key is None and kid is not None:
        refreshed = keys.refresh(instance)
        if refreshed is not None:
            key = _pick_key(refreshed, kid, alg)
    if key is None:
        if kid is None:
            raise InvalidRequest(
                "token has no 'kid' and the issuer publishes several keys", reason="missing_kid"
            )
        raise InvalidRequest(
            "token is signed with a key the GitLab instance does not publish", reason="unknown_kid"
        )

    if not verify_signature(parsed, key, alg):
        raise InvalidRequest("token signature is not valid", reason="bad_signature")

    claims = unverified
    if legacy:
        _check_legacy(claims)
        # CI_JOB_JWT has no aud by design (checked just above); the other claims keep GitLab's types.
        check_types({**claims, "aud": ""})
    else:
        _check_audience(claims, instance)
        check_types(claims)
    # check_types made exp and iat present integers, and nbf one when present (claims.NUMERIC_DATE_CLAIMS).
    _check_times(claims, now=now, leeway=limits.leeway)
    max_age = limits.max_source_age_seconds
    if max_age is not None and now - claims["iat"] > max_age + limits.leeway:
        raise InvalidRequest(
            f"token was issued more than {max_age} s ago (tokens.maxSourceAgeSeconds); request a fresh one",
            reason="too_old",
        )
    return VerifiedToken(instance=instance, claims=claims, kid=kid, legacy=legacy)


def _check_audience(claims: dict[str, Any], instance: GitLabInstance) -> None:
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not values or not all(isinstance(v, str) for v in values):
        raise InvalidRequest("token has no usable 'aud' claim", reason="bad_audience")
    if not any(v in instance.audiences for v in values):
        raise InvalidRequest(
            f"token audience is not accepted (expected one of: {', '.join(instance.audiences)})",
            reason="bad_audience",
        )


def _check_legacy(claims: dict[str, Any]) -> None:
    """A CI_JOB_JWT: no aud at all, and sub is job_<job_id>; anything else with a bare-host iss is refused."""
    if "aud" in claims:
        raise InvalidRequest(
            "a token whose iss is a bare host must be a CI_JOB_JWT, which has no 'aud'", reason="bad_audience"
        )
    sub, job_id = claims.get("sub"), claims.get("job_id")
    if not isinstance(sub, str) or not _LEGACY_SUB.fullmatch(sub) or sub != f"job_{job_id}":
        raise InvalidRequest("a CI_JOB_JWT's 'sub' must be job_<job_id>", reason="claim_type")


def _check_times(claims: dict[str, Any], *, now: float, leeway: int) -> None:
    exp, iat = claims["exp"], claims["iat"]
    if now >= exp + leeway:
        raise InvalidRequest("token has expired", reason="expired")
    nbf = claims.get("nbf")
    if nbf is not None and now + leeway < nbf:
        raise InvalidRequest("token is not valid yet (nbf is in the future)", reason="not_yet_valid")
    if now + leeway < iat:
        raise InvalidRequest("token was issued in the future (iat)", reason="not_yet_valid")
