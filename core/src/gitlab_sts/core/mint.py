"""Minting the exchanged token that AWS STS AssumeRoleWithWebIdentity accepts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gitlab_sts.core.bindings import Grant
from gitlab_sts.core.errors import InvalidRequest
from gitlab_sts.core.jose import sign_compact
from gitlab_sts.core.keys import ManagedKey

TAGS_CLAIM = "https://aws.amazon.com/tags"
SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"


@dataclass(frozen=True)
class MintedToken:
    """A signed token and the facts the answer and audit line need."""

    token: str
    jti: str
    kid: str
    issued_at: int
    expires_at: int
    claims: dict[str, Any]

    @property
    def expires_in(self) -> int:
        """Seconds from issue to expiry."""
        return self.expires_at - self.issued_at


def build_claims(grant: Grant, *, issuer: str, source_exp: int, now: int, jti: str,
                 outlive_source: bool) -> dict[str, Any]:
    """The claims of a minted token (pure: exposed for tests and explain)."""
    exp = now + grant.lifetime
    if not outlive_source:
        exp = min(exp, source_exp)
    if exp <= now:
        raise InvalidRequest("the GitLab token expires too soon to exchange", reason="expired")
    claims: dict[str, Any] = {
        "iss": issuer, "sub": grant.subject, "aud": grant.audience,
        "iat": now, "nbf": now, "exp": exp, "jti": jti,
    }
    if grant.tags:
        tags: dict[str, Any] = {"principal_tags": {k: [v] for k, v in grant.tags.items()}}
        if grant.transitive_tags:
            tags["transitive_tag_keys"] = list(grant.transitive_tags)
        claims[TAGS_CLAIM] = tags
    if grant.source_identity:
        claims[SOURCE_IDENTITY_CLAIM] = grant.source_identity
    return claims


def mint(grant: Grant, *, issuer: str, source_exp: int, key: ManagedKey, now: datetime,
         outlive_source: bool = False) -> MintedToken:
    """Sign a token for a grant with the given key."""
    issued = int(now.astimezone(UTC).timestamp())
    jti = str(uuid.uuid4())
    claims = build_claims(grant, issuer=issuer, source_exp=source_exp, now=issued, jti=jti,
                          outlive_source=outlive_source)
    token = sign_compact(claims, key.key, key.alg, key.kid)
    return MintedToken(token=token, jti=jti, kid=key.kid, issued_at=issued,
                       expires_at=claims["exp"], claims=claims)
