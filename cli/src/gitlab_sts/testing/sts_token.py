"""Web identity token checks of the local STS, following what AWS documents (not AWS).

The keys come from the issuer itself, as AWS does it: `<iss>/.well-known/openid-configuration`,
then its `jwks_uri`. Fetches use https (http only to loopback, for tests), follow no redirects,
ignore proxy variables, and are cached for a configurable time.
"""

from __future__ import annotations

import binascii
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwk, jws
from joserfc.errors import JoseError

from gitlab_sts.core import httpfetch
from gitlab_sts.core.jwtparse import b64url_decode
from gitlab_sts.core.tags import MAX_KEY, MAX_TAGS, sanitise_source_identity, sanitise_value
from gitlab_sts.testing.sts_config import Provider, StsConfigError, check_fetch_url

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
TAGS_CLAIM = "https://aws.amazon.com/tags"
SOURCE_IDENTITY_CLAIM = "https://aws.amazon.com/source_identity"
# Observed AWS wording (note the double space after the comma, as AWS sends it).
KEY_NOT_FOUND = ("Couldn't retrieve verification key from your identity provider,  please reference "
                 "AssumeRoleWithWebIdentity documentation for requirements")
NOT_VALIDATED = ("The web identity token that was passed could not be validated by AWS. Get a new identity "
                 "token from the identity provider and then retry the request.")
MAX_DOCUMENT_BYTES = 1 << 20
FUTURE_SKEW = 300  # seconds of tolerance on iat/nbf in the future (AWS's own value is undocumented)


class StsFault(Exception):
    """An STS error answer: code, message and the HTTP status of the botocore model."""

    def __init__(self, code: str, message: str, status: int = 400, *, detail: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        # Why, for the local log and a debugging header only: AWS keeps its reasons to itself.
        self.detail = detail or message


def invalid(message: str = NOT_VALIDATED, detail: str | None = None) -> StsFault:
    """An InvalidIdentityToken fault."""
    return StsFault("InvalidIdentityToken", message, 400, detail=detail)


@dataclass(frozen=True)
class ValidToken:
    """A token that passed every check, with what the trust policy and the answer need."""

    provider: Provider
    subject: str
    audience: str
    claims: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    transitive_tag_keys: tuple[str, ...] = ()
    source_identity: str | None = None


class KeyFetcher:
    """Fetches and briefly caches each issuer's discovery document and JWKS."""

    def __init__(self, *, cache_seconds: float, ca_bundle: str | None, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._clock = clock
        # No redirects: following one would let a token's issuer move key material elsewhere silently.
        self._opener = httpfetch.opener(ca_bundle, proxies=False)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.fetches = 0  # how many JWKS fetches happened (tests check the cache with it)

    def keys(self, issuer: str) -> list[dict[str, Any]]:
        """The JWKS keys of an issuer, from cache while fresh."""
        with self._lock:
            hit = self._cache.get(issuer)
            if hit is not None and self._clock() - hit[0] < self._cache_seconds:
                return hit[1]
        keys = self._fetch_keys(issuer)
        with self._lock:
            self._cache[issuer] = (self._clock(), keys)
        return keys

    def _fetch_keys(self, issuer: str) -> list[dict[str, Any]]:
        discovery = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery")
        if discovery.get("issuer") != issuer:
            raise invalid(KEY_NOT_FOUND, f"discovery issuer {discovery.get('issuer')!r} is not {issuer!r}")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise invalid(KEY_NOT_FOUND, "discovery document has no jwks_uri")
        try:
            check_fetch_url(jwks_uri, "jwks_uri")
        except StsConfigError as exc:
            raise invalid(KEY_NOT_FOUND, str(exc)) from None
        document = self._get_json(jwks_uri, "JWKS")
        keys = document.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise invalid(KEY_NOT_FOUND, "JWKS has no keys list")
        self.fetches += 1
        return keys

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        # Only https/loopback-http URLs reach here (check_fetch_url on the provider and jwks_uri).
        try:
            fetched = httpfetch.get(self._opener, url, max_bytes=MAX_DOCUMENT_BYTES, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise StsFault("IDPCommunicationError", KEY_NOT_FOUND, 400,
                               detail=f"{what} {url} answered HTTP {exc.code}") from None
            raise invalid(KEY_NOT_FOUND, f"{what} {url} answered HTTP {exc.code}") from None
        except httpfetch.TooLarge:
            raise invalid(KEY_NOT_FOUND, f"{what} {url} is larger than {MAX_DOCUMENT_BYTES} bytes") from None
        except (urllib.error.URLError, OSError) as exc:
            raise StsFault("IDPCommunicationError", KEY_NOT_FOUND, 400,
                           detail=f"{what} {url} unreachable: {exc}") from None
        try:
            return httpfetch.json_object(fetched.body)
        except httpfetch.NotJson:
            raise invalid(KEY_NOT_FOUND, f"{what} {url} is not JSON") from None
        except httpfetch.NotAnObject:
            raise invalid(KEY_NOT_FOUND, f"{what} {url} is not a JSON object") from None


def _segment(part: str) -> dict[str, Any]:
    # Plain json.loads, not core.jwtparse.strict_json_object: duplicate members are not refused here.
    value = json.loads(b64url_decode(part))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pick_key(keys: list[dict[str, Any]], kid: Any, alg: str) -> dict[str, Any]:
    kty = "RSA" if alg.startswith("RS") else "EC"
    usable = [k for k in keys if k.get("kty") == kty and k.get("use", "sig") == "sig"
              and ("key_ops" not in k or "verify" in k["key_ops"])]
    if kid is not None:
        usable = [k for k in usable if k.get("kid") == kid]
    # Without a kid the choice is only safe when exactly one key could have signed.
    if len(usable) != 1:
        raise invalid(KEY_NOT_FOUND, f"{len(usable)} usable {kty} keys for kid {kid!r}")
    key = usable[0]
    if "alg" in key and key["alg"] != alg:
        raise invalid(detail=f"key {kid!r} is for {key['alg']}, token says {alg}")
    return key


def parse_session_tags(value: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    """Check the https://aws.amazon.com/tags claim; return (tags, transitive keys) or raise."""
    if not isinstance(value, dict) or set(value) - {"principal_tags", "transitive_tag_keys"}:
        raise invalid("Session tags claim must be an object with principal_tags and transitive_tag_keys",
                      "bad tags claim shape")
    principal = value.get("principal_tags")
    if not isinstance(principal, dict):
        raise invalid("Session tags claim must hold a principal_tags object", "no principal_tags")
    if len(principal) > MAX_TAGS:
        raise invalid("Session tags exceed the limit of 50 tags", f"{len(principal)} tags")
    tags: dict[str, str] = {}
    seen: set[str] = set()
    for key, values in principal.items():
        # sanitise_value(x) == x: x has at most 256 characters, all of them allowed in tags.
        if not 1 <= len(key) <= MAX_KEY or sanitise_value(key) != key:
            raise invalid("Session tag keys must be 1-128 characters of [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]",
                          f"bad tag key {key!r}")
        if key.lower().startswith("aws:"):
            raise invalid("Session tag keys must not start with aws:", f"reserved tag key {key!r}")
        if key.lower() in seen:
            raise invalid("Session tag keys are case-insensitive and must be unique", f"duplicate {key!r}")
        seen.add(key.lower())
        # AWS's documented form is a one-element array of strings; multivalued tags do not exist.
        if not (isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)):
            raise invalid("Session tag values must be a single-element array of strings", f"tag {key!r}")
        if sanitise_value(values[0]) != values[0]:
            raise invalid("Session tag values must be at most 256 characters of [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]",
                          f"bad value for tag {key!r}")
        tags[key] = values[0]
    transitive = value.get("transitive_tag_keys", [])
    if not isinstance(transitive, list) or not all(isinstance(k, str) for k in transitive):
        raise invalid("transitive_tag_keys must be an array of strings", "bad transitive_tag_keys")
    lowered = {k.lower() for k in tags}
    missing = [k for k in transitive if k.lower() not in lowered]
    if missing:
        raise invalid("Transitive tag keys must be a subset of the session tag keys", f"unknown {missing}")
    return tags, tuple(transitive)


def validate_token(token: str, *, account: str, find_provider: Callable[[str, str], Provider | None],
                   fetcher: KeyFetcher, now: float) -> ValidToken:
    """Run every documented check on a web identity token, in AWS's observable order."""
    parts = token.split(".")
    if len(parts) != 3:
        raise invalid(detail="not a compact JWS")
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid(detail="header or payload is not base64url JSON") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise invalid(detail=f"algorithm {alg!r} is not one of {', '.join(ALGORITHMS)}")
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise invalid("Missing a required claim: iss")
    provider = find_provider(account, iss)
    if provider is None:
        raise invalid(f"No OpenIDConnect provider found in your account for {iss}")
    key = _pick_key(fetcher.keys(provider.url), header.get("kid"), alg)
    try:
        jws.deserialize_compact(token, jwk.import_key(key), algorithms=[alg])
    except (JoseError, ValueError, TypeError) as exc:
        raise invalid(detail=f"signature check failed: {type(exc).__name__}") from None
    for name in ("aud", "sub", "exp", "iat"):
        if name not in claims:
            raise invalid(f"Missing a required claim: {name}")
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _is_int(claims[name]):
            raise invalid(detail=f"{name} is not an integer")  # AWS: "integer or long integer" only
    audience = _audience(claims, provider)
    exp, current = claims["exp"], int(now)
    if current >= exp:
        raise StsFault("ExpiredTokenException",
                       f"Token expired: current date/time {current} must be before the expiration date/time {exp}")
    if claims["iat"] > current + FUTURE_SKEW or claims.get("nbf", 0) > current + FUTURE_SKEW:
        raise invalid(detail="iat or nbf is in the future")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise invalid(detail="sub is not a non-empty string")
    tags: dict[str, str] = {}
    transitive: tuple[str, ...] = ()
    if TAGS_CLAIM in claims:
        tags, transitive = parse_session_tags(claims[TAGS_CLAIM])
    source_identity = claims.get(SOURCE_IDENTITY_CLAIM)
    if source_identity is not None and (
            not isinstance(source_identity, str) or sanitise_source_identity(source_identity) != source_identity):
        raise invalid("Source identity must be 2-64 characters of [\\w+=,.@-]", "bad source identity")
    return ValidToken(provider=provider, subject=subject, audience=audience, claims=claims, tags=tags,
                      transitive_tag_keys=transitive, source_identity=source_identity)


def _audience(claims: dict[str, Any], provider: Provider) -> str:
    aud = claims["aud"]
    if isinstance(aud, list):
        # Reported (not documented): with several audiences AWS matches azp instead.
        aud = claims.get("azp")
    if not isinstance(aud, str) or aud not in provider.client_ids:
        raise invalid("Incorrect token audience")
    return aud
