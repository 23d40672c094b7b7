"""Compact JWS on the hot path: joserfc's algorithm models, applied to a token split and decoded once.

`joserfc.jws.deserialize_compact` and `joserfc.jwt.encode` re-split, re-decode and re-encode what the exchange
already holds (core.jwtparse parsed the token; mint builds the claims), which measured as a large share of a
request. This module calls the same joserfc pieces (header registry checks, `JWSAlgModel.verify` / `.sign`)
directly, so the cryptography and the header rules stay joserfc's.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from gitlab_sts.core.jwtparse import UnverifiedJWT, b64url_encode
from gitlab_sts.core.settings import SIGNING_ALGORITHMS, VERIFY_ALGORITHMS

# The header rules joserfc's deserialize_compact applies (crit, registered member types, no unknown
# members), for exactly the algorithms settings can name.
_REGISTRY = JWSRegistry(algorithms=sorted(set(VERIFY_ALGORITHMS) | set(SIGNING_ALGORITHMS)))


def verify_signature(parsed: UnverifiedJWT, key: RSAKey | ECKey, alg: str) -> bool:
    """Whether the token's header passes joserfc's rules and its signature verifies with key under alg."""
    try:
        _REGISTRY.check_header(parsed.header)
        model = _REGISTRY.get_alg(alg)
        model.check_key(key)
        return bool(model.verify(parsed.signing_input, parsed.signature, key))
    except (JoseError, ValueError):
        return False


@lru_cache(maxsize=64)
def header_segment(alg: str, kid: str) -> str:
    """The encoded protected header of a minted token (the same for every token of one key)."""
    # Member order as joserfc's jwt.encode writes it.
    header = {"typ": "JWT", "alg": alg, "kid": kid}
    return b64url_encode(json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii"))


def sign_compact(claims: dict[str, Any], key: RSAKey | ECKey, alg: str, kid: str) -> str:
    """A compact JWS of the claims (JSON as joserfc's jwt.encode writes it), signed with key."""
    payload = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    signing_input = f"{header_segment(alg, kid)}.{b64url_encode(payload)}"
    signature = _REGISTRY.get_alg(alg).sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url_encode(signature)}"
