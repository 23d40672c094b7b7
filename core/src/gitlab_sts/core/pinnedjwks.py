"""Refreshed copies of pinned GitLab key sets: the document the operator writes and the service reads.

Settings may pin an instance's JWKS (`gitlab[].jwks`, dated by `pinnedAt`) and name an internal URL the
operator refreshes it from (`pinnedJwksSource`). The operator stores each fetched copy, with the time it was
fetched, as one file of a ConfigMap the service mounts; the service uses that copy instead of the settings
one when it is newer than `pinnedAt`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.keys import PRIVATE_MEMBERS
from gitlab_sts.core.settings import GitLabInstance, Settings
from gitlab_sts.core.timefmt import TimestampError, parse_rfc3339, rfc3339

# A fetched key set larger than this is refused (GitLab's holds one or two RSA keys, ~1 KiB).
MAX_JWKS_BYTES = 256 * 1024


@dataclass(frozen=True)
class PinnedCopy:
    """One instance's key set as the operator last fetched it."""

    issuer: str
    fetched_at: datetime
    jwks: dict[str, Any]


def file_name(issuer: str) -> str:
    """The ConfigMap key (and file name) of an issuer's copy: stable, and valid whatever the issuer URL holds."""
    return "jwks-" + hashlib.sha256(issuer.encode()).hexdigest()[:32] + ".json"


def check_public_jwks(document: Any) -> dict[str, Any]:
    """Return a canonical {"keys": [...]} of public RSA/EC keys, or raise ConfigError saying what is wrong.

    The whole document is refused (not filtered) when any member is unusable: a key set that holds a private
    key or an unknown key type is not what the source should serve, and keeping the last copy is safer.
    """
    if not isinstance(document, dict):
        raise ConfigError("the key set is not a JSON object")
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise ConfigError("the key set has no keys (a non-empty 'keys' list is required)")
    for index, key in enumerate(keys):
        if not isinstance(key, dict):
            raise ConfigError(f"keys[{index}] is not a JSON object")
        if key.get("kty") not in ("RSA", "EC"):
            raise ConfigError(f"keys[{index}]: kty must be RSA or EC, got {str(key.get('kty'))[:20]!r}")
        private = sorted(PRIVATE_MEMBERS & key.keys())
        if private:
            # Name the members only, never their values.
            raise ConfigError(f"keys[{index}] holds private key members ({', '.join(private)}): refused")
    try:
        KeySet.import_key_set({"keys": keys})
    except Exception:  # joserfc raises several types for bad members
        raise ConfigError("the key set holds a key that cannot be imported") from None
    return {"keys": keys}


def parse_jwks_bytes(body: bytes) -> dict[str, Any]:
    """Parse a fetched key set (size-limited JSON), checked by check_public_jwks."""
    if len(body) > MAX_JWKS_BYTES:
        raise ConfigError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise ConfigError("the key set is not JSON") from None
    return check_public_jwks(document)


def render_copy(copy: PinnedCopy) -> str:
    """The file content: {"issuer", "fetchedAt", "jwks"}, stable for equal input."""
    return json.dumps({"issuer": copy.issuer, "fetchedAt": rfc3339(copy.fetched_at), "jwks": copy.jwks},
                      sort_keys=True, separators=(",", ":")) + "\n"


def parse_copy(text: str, source: str = "pinned key set") -> PinnedCopy:
    """Parse and check one file written by render_copy; ConfigError names what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ConfigError(f"{source}: not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("issuer"), str):
        raise ConfigError(f"{source}: expected an object with issuer, fetchedAt and jwks")
    try:
        fetched_at = parse_rfc3339(doc.get("fetchedAt"))
    except TimestampError as exc:
        what = "must carry a time zone" if exc.problem == "zone" else "is not an ISO 8601 time"
        raise ConfigError(f"{source}: fetchedAt {what}") from None
    try:
        jwks = check_public_jwks(doc.get("jwks"))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return PinnedCopy(doc["issuer"], fetched_at, jwks)


def newer_copy(instance: GitLabInstance, copies: Mapping[str, PinnedCopy]) -> PinnedCopy | None:
    """The operator's copy to use for instance: only with pinnedJwksSource, and only when newer than pinnedAt."""
    if instance.jwks is None or instance.pinned_jwks_source is None:
        return None
    copy = copies.get(instance.issuer)
    if copy is None or copy.issuer != instance.issuer:
        return None
    if instance.pinned_at is not None and copy.fetched_at <= instance.pinned_at:
        return None  # someone pasted a newer copy into settings since: it wins
    return copy


def apply_copies(settings: Settings, copies: Mapping[str, PinnedCopy]) -> tuple[Settings, frozenset[str]]:
    """Settings whose pinned instances carry the newer operator copies (jwks, pinnedAt = fetchedAt).

    Returns the effective settings and the issuers whose key set came from the operator.
    """
    used: set[str] = set()
    instances = []
    for inst in settings.gitlab:
        copy = newer_copy(inst, copies)
        if copy is None:
            instances.append(inst)
            continue
        used.add(inst.issuer)
        # model_copy skips validation on purpose: the copy was checked when parsed, and settings were valid.
        instances.append(inst.model_copy(update={"jwks": copy.jwks, "pinned_at": copy.fetched_at}))
    if not used:
        return settings, frozenset()
    return settings.model_copy(update={"gitlab": tuple(instances)}), frozenset(used)


@dataclass(frozen=True)
class PinnedAge:
    """How old an instance's pinned key set is, and the warning when it is older than pinnedMaxAgeDays."""

    issuer: str
    age: timedelta
    warning: str | None


def pinned_ages(settings: Settings, now: datetime, from_operator: frozenset[str] = frozenset()) -> list[PinnedAge]:
    """The age of every pinned key set with a pinnedAt, warning from pinnedMaxAgeDays on.

    settings are the effective ones (apply_copies): for the issuers in from_operator, jwks and pinnedAt are
    the operator's refreshed copy and its fetchedAt, so the age is that copy's.
    """
    out = []
    for inst in settings.gitlab:
        if inst.jwks is None or inst.pinned_at is None:
            continue
        age = now - inst.pinned_at
        out.append(PinnedAge(inst.issuer, age, _stale_warning(inst, age, from_operator)))
    return out


def _stale_warning(inst: GitLabInstance, age: timedelta, from_operator: frozenset[str]) -> str | None:
    limit = inst.pinned_max_age_days
    if age.days < limit:
        return None
    if inst.issuer in from_operator:
        return (f"the pinned JWKS of {inst.issuer} was last fetched by the operator from {inst.pinned_jwks_source} "
                f"{age.days} days ago (fetchedAt), more than pinnedMaxAgeDays={limit}: the refresh is failing; "
                "see the operator's log and the pinned-jwks.json entry of its status ConfigMap")
    if inst.pinned_jwks_source is not None:
        return (f"the pinned JWKS of {inst.issuer} was copied {age.days} days ago (pinnedAt) and the operator has "
                f"not fetched a newer copy from {inst.pinned_jwks_source}, more than pinnedMaxAgeDays={limit}: "
                "see the operator's log and status ConfigMap")
    return (f"the pinned JWKS of {inst.issuer} was copied {age.days} days ago (pinnedAt), more than "
            f"pinnedMaxAgeDays={limit}: if GitLab rotated its CI signing key, its tokens fail with unknown_kid; "
            "copy the key set again and update pinnedAt")
