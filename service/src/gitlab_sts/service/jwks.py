"""GitLab key sets: fetched only from trusted issuers, cached, refreshed on new kids, served stale in outages."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import KeySet

from gitlab_sts.core import httpfetch
from gitlab_sts.core.errors import TemporarilyUnavailable
from gitlab_sts.core.settings import GitLabInstance, JwksSettings, check_url
from gitlab_sts.service import metrics

log = logging.getLogger("gitlab_sts.service.jwks")
MAX_DOCUMENT_BYTES = 512 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


class FetchError(Exception):
    """A discovery or JWKS fetch that failed (reason only, never content)."""


@dataclass
class _Entry:
    keys: KeySet | None = None
    fetched_at: float = 0.0
    fresh_until: float = 0.0
    last_attempt: float = float("-inf")
    last_error: str | None = None
    pinned: dict[str, Any] | None = None  # the pinned document `keys` was imported from
    # Looked up when an entry is made, not at import: under gevent it must be the patched (greenlet) lock.
    lock: threading.Lock = field(default_factory=lambda: threading.Lock())


def _max_age(cache_control: str | None) -> int | None:
    if not cache_control:
        return None
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return 0
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)) if match else None


class JwksCache:
    """Implements core.verify.KeySource over HTTP with per-issuer caching."""

    def __init__(self, settings: JwksSettings, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def configure(self, settings: JwksSettings) -> None:
        """Adopt new cache settings after a settings reload (cached keys stay)."""
        self.settings = settings

    def status(self) -> dict[str, Any]:
        """Per issuer: whether keys are held, their age and the last error (for /readyz)."""
        now = self._clock()
        return {
            # Pinned key sets (settings gitlab[].jwks) have fetched_at = inf: no age to round.
            issuer: {"cached": e.keys is not None,
                     "age_seconds": round(now - e.fetched_at) if e.keys and e.fetched_at != float("inf") else None,
                     "fresh": now < e.fresh_until, "last_error": e.last_error}
            for issuer, e in self._entries.items()
        }

    def key_set(self, instance: GitLabInstance) -> KeySet:
        """The instance's keys: cached when fresh, refetched when not, stale within bounds in an outage."""
        if instance.jwks is not None:
            return self._pinned(instance)
        entry = self._entry(instance)
        if entry.keys is not None and self._clock() < entry.fresh_until:
            return entry.keys
        with entry.lock:
            now = self._clock()
            if entry.keys is not None and now < entry.fresh_until:
                return entry.keys
            # Retry an expired or failing issuer at most once per interval, not on every request.
            if now - entry.last_attempt >= self.settings.refetch_interval_seconds:
                self._fetch(instance, entry)
                now = self._clock()
            if entry.keys is not None and now - entry.fresh_until <= self.settings.max_stale_seconds:
                return entry.keys  # fresh, or stale within bounds while GitLab is unreachable
        raise _unavailable(self.settings.refetch_interval_seconds)

    def refresh(self, instance: GitLabInstance) -> KeySet | None:
        """The keys of a fetch that started after this call (an unknown kid): coalesced and rate-limited.

        One fetch per issuer is in flight at a time; concurrent callers wait for it on the entry's lock. A fetch
        that started before this call may predate a key GitLab publishes now (a rotation), so it does not
        answer this call: the caller waits until the refetch interval since that fetch has passed and fetches
        again. A flood of forged kids therefore makes at most one fetch per interval per process and delays a
        genuine new-key token by at most about one interval, never refuses it. While GitLab is failing, the
        answer is TemporarilyUnavailable (503, Retry-After): the key may well exist.
        """
        if instance.jwks is not None:
            return None
        entry = self._entry(instance)
        since = self._clock()
        interval = self.settings.refetch_interval_seconds
        with entry.lock:
            if entry.last_attempt >= since:
                return self._fetched(entry, interval)  # a fetch started after this call: as current as it gets
            if entry.last_error is not None and since - entry.last_attempt < interval:
                raise _unavailable(entry.last_attempt + interval - since)  # failed just now: not before the interval
            wait = entry.last_attempt + interval - self._clock()
            if wait > 0:
                # time.sleep looked up now: under gevent a greenlet sleep, so other requests go on meanwhile.
                (self._sleep or time.sleep)(wait)
            self._fetch(instance, entry)
            return self._fetched(entry, interval)

    @staticmethod
    def _fetched(entry: _Entry, interval: float) -> KeySet | None:
        if entry.last_error is not None:
            raise _unavailable(interval)
        return entry.keys

    def _entry(self, instance: GitLabInstance) -> _Entry:
        entry = self._entries.get(instance.issuer)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(instance.issuer, _Entry())
        return entry

    def _pinned(self, instance: GitLabInstance) -> KeySet:
        entry = self._entry(instance)
        # The pinned document changes with a settings reload or a refreshed copy from the operator
        # (core.pinnedjwks): re-import then. The identity test keeps the usual case to one comparison.
        if entry.keys is None or entry.pinned is not instance.jwks:
            if entry.keys is None or entry.pinned != instance.jwks:
                keys = KeySet.import_key_set(instance.jwks)  # type: ignore[arg-type]
                entry.keys, entry.fetched_at, entry.fresh_until = keys, float("inf"), float("inf")
            entry.pinned = instance.jwks
        return entry.keys

    def _fetch(self, instance: GitLabInstance, entry: _Entry) -> None:
        entry.last_attempt = self._clock()
        try:
            jwks_uri = instance.jwks_uri or self._discover(instance)
            document, cache_control = self._get_json(jwks_uri, instance)
            keys = _import_keys(document)
        except FetchError as exc:
            entry.last_error = str(exc)
            metrics.JWKS_FETCHES.labels(issuer=instance.issuer, result="error").inc()
            log.warning("GitLab key fetch failed", extra={"event": "jwks_fetch", "issuer": instance.issuer,
                                                          "error": str(exc)})
            return
        s = self.settings
        max_age = _max_age(cache_control)
        ttl = min(max(max_age if max_age is not None else 3600, s.min_cache_seconds), s.max_cache_seconds)
        entry.keys, entry.fetched_at, entry.last_error = keys, self._clock(), None
        entry.fresh_until = entry.fetched_at + ttl
        metrics.JWKS_FETCHES.labels(issuer=instance.issuer, result="ok").inc()
        log.info("GitLab keys fetched", extra={"event": "jwks_fetch", "issuer": instance.issuer,
                                               "keys": len(keys.keys), "ttl": ttl})

    def _discover(self, instance: GitLabInstance) -> str:
        doc, _ = self._get_json(instance.discovery_url, instance)
        if doc.get("issuer") != instance.issuer:
            raise FetchError("discovery document's issuer does not equal the configured issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise FetchError("discovery document has no jwks_uri")
        try:
            return check_url(uri, allow_http=instance.allow_insecure_http, what="jwks_uri")
        except ValueError as exc:
            raise FetchError(str(exc)) from None

    def _get_json(self, url: str, instance: GitLabInstance) -> tuple[dict[str, Any], str | None]:
        # A redirect would lead to a URL that is not in settings: httpfetch follows none.
        try:
            fetched = httpfetch.get(httpfetch.opener(instance.ca_bundle), url, max_bytes=MAX_DOCUMENT_BYTES,
                                    timeout=self.settings.timeout_seconds)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{url} answered HTTP {exc.code}") from None
        except httpfetch.TooLarge:
            raise FetchError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"{url} unreachable: {reason}") from None
        try:
            doc = httpfetch.json_object(fetched.body)
        except httpfetch.NotJson:
            raise FetchError(f"{url} did not answer JSON") from None
        except httpfetch.NotAnObject:
            raise FetchError(f"{url} did not answer a JSON object") from None
        return doc, fetched.headers.get("Cache-Control")


def _unavailable(retry_after: float) -> TemporarilyUnavailable:
    return TemporarilyUnavailable(
        "the GitLab instance's signing keys cannot be fetched right now; try again shortly",
        reason="jwks_unavailable", retry_after=retry_after,
    )


def _import_keys(document: dict[str, Any]) -> KeySet:
    raw = document.get("keys")
    if not isinstance(raw, list):
        raise FetchError("JWKS has no keys list")
    usable = [k for k in raw if isinstance(k, dict) and k.get("kty") in ("RSA", "EC") and "d" not in k]
    if not usable:
        raise FetchError("JWKS holds no usable public RSA or EC key")
    try:
        return KeySet.import_key_set({"keys": usable})
    except Exception:  # joserfc raises several types for bad members
        raise FetchError("JWKS holds a key that cannot be imported") from None
