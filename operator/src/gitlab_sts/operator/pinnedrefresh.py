"""Refresh pinned GitLab key sets from their internal URLs (settings gitlab[].pinnedJwksSource).

Each pass fetches every source, checks the answer (JSON, size-limited, public RSA/EC keys only, at least one)
and writes the copies that changed into one ConfigMap (a key per issuer, core.pinnedjwks.file_name), in one
write conditioned on the resourceVersion read. A failed fetch leaves the last copy in place; it shows in the
metrics, the log and the status ConfigMap (pinned-jwks.json), and the service's staleness warning keeps
counting from the last copy's fetchedAt.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.pinnedjwks import MAX_JWKS_BYTES, PinnedCopy, file_name, parse_copy, parse_jwks_bytes, render_copy
from gitlab_sts.core.settings import GitLabInstance, Settings
from gitlab_sts.core.timefmt import rfc3339_or_none
from gitlab_sts.operator import metrics
from gitlab_sts.operator.kube import TRANSIENT, ApiError, KubeClient, path_for
from gitlab_sts.operator.statusmap import StatusKey

log = logging.getLogger("gitlab_sts.operator.pinned")

STATUS_KEY = "pinned-jwks.json"
# An unchanged key set is written again (fetchedAt moved on) at most this often: the service's staleness
# warning counts from fetchedAt, so it must move while refreshes succeed, yet not cost a write per pass.
RECONFIRM_AFTER = timedelta(days=1)

WRITTEN = "written"
UNCHANGED = "unchanged"
FAILED = "error"
CONFLICT = "conflict"


class FetchError(Exception):
    """A source that could not be fetched or answered something unusable (reason only, never content)."""


@dataclass
class SourceState:
    """What the operator knows about one instance's source."""

    issuer: str
    url: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    copy_fetched_at: datetime | None = None

    def as_status(self) -> dict[str, Any]:
        """This source's entry in pinned-jwks.json."""
        return {"source": self.url, "lastAttemptAt": rfc3339_or_none(self.last_attempt),
                "lastSuccessAt": rfc3339_or_none(self.last_success),
                "copyFetchedAt": rfc3339_or_none(self.copy_fetched_at), "lastError": self.last_error,
                "consecutiveFailures": self.failures, "key": file_name(self.issuer)}


def instances_with_source(settings: Settings) -> tuple[GitLabInstance, ...]:
    """The trusted instances whose pinned key set the operator refreshes."""
    return tuple(g for g in settings.gitlab if g.pinned_jwks_source is not None)


async def fetch_jwks(instance: GitLabInstance, timeout: float) -> dict[str, Any]:
    """GET the instance's pinnedJwksSource (no redirects, caBundle as the only CA when set) and check it."""
    url = instance.pinned_jwks_source
    assert url is not None
    context: ssl.SSLContext | None = None
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=instance.ca_bundle)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                session.get(url, ssl=context if context is not None else True, allow_redirects=False,
                            headers={"Accept": "application/json", "User-Agent": "gitlab-sts-operator"}) as resp:
            if resp.status != 200:
                # A redirect would lead to a URL that is not in settings.
                raise FetchError(f"{url} answered HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    break  # enough to refuse it; the rest is never read
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise FetchError(f"{url} unreachable: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        return parse_jwks_bytes(bytes(body))
    except ConfigError as exc:
        raise FetchError(f"{url}: {exc}; keeping the last copy") from None


@dataclass
class PinnedRefresher:
    """Keeps the pinned-JWKS ConfigMap current with the instances' sources (one per operator)."""

    settings: Settings
    client: KubeClient
    namespace: str
    configmap: str
    status_configmap: str
    sources: dict[str, SourceState] = field(default_factory=dict)
    _status: StatusKey = field(init=False)

    def __post_init__(self) -> None:
        self._status = StatusKey(self.client, self.namespace, self.status_configmap, STATUS_KEY)
        for inst in instances_with_source(self.settings):
            assert inst.pinned_jwks_source is not None
            self.sources[inst.issuer] = SourceState(inst.issuer, inst.pinned_jwks_source)

    @property
    def failing(self) -> bool:
        """Whether the last pass left any source failing."""
        return any(s.failures for s in self.sources.values())

    @property
    def last_error(self) -> str | None:
        """The first current error, for the liveness detail."""
        return next((s.last_error for s in self.sources.values() if s.last_error), None)

    async def refresh(self, now: datetime) -> dict[str, str]:
        """One pass: fetch every source, write what changed; returns issuer -> written/unchanged/error/conflict."""
        fetched: dict[str, dict[str, Any]] = {}
        results: dict[str, str] = {}
        timeout = self.settings.jwks.timeout_seconds
        for inst in instances_with_source(self.settings):
            state = self.sources[inst.issuer]
            state.last_attempt = now
            try:
                fetched[inst.issuer] = await fetch_jwks(inst, timeout)
            except FetchError as exc:
                state.failures += 1
                state.last_error = str(exc)
                results[inst.issuer] = FAILED
                log.error("pinned JWKS refresh of %s failed (attempt %d): %s", inst.issuer, state.failures, exc)
        path = path_for("v1", "configmaps", self.namespace, self.configmap)
        try:
            results.update(await self._write(path, fetched, now))
        except TRANSIENT as exc:
            log.error("cannot write the pinned JWKS ConfigMap: %s", exc)
            for issuer in fetched:
                results[issuer] = CONFLICT if isinstance(exc, ApiError) and exc.status == 409 else FAILED
                self.sources[issuer].last_error = f"ConfigMap write failed: {exc}"[:500]
                self.sources[issuer].failures += 1
        for issuer, result in results.items():
            metrics.PINNED_REFRESHES.labels(issuer=issuer, result=result).inc()
            state = self.sources[issuer]
            metrics.PINNED_FAILURES.labels(issuer=issuer).set(state.failures)
            if state.copy_fetched_at is not None:
                metrics.PINNED_FETCHED_AT.labels(issuer=issuer).set(state.copy_fetched_at.timestamp())
        await self.write_status()
        return results

    async def _write(self, path: str, fetched: dict[str, dict[str, Any]], now: datetime) -> dict[str, str]:
        existing = await self.client.get_or_none(path)
        data: dict[str, Any] = dict((existing or {}).get("data") or {})
        updates: dict[str, str] = {}
        results: dict[str, str] = {}
        for issuer, state in self.sources.items():
            if issuer not in fetched:  # failed this time: report the age of the copy still held
                held = _held_copy(data.get(file_name(issuer)), issuer)
                state.copy_fetched_at = held.fetched_at if held is not None else None
        for issuer, jwks in fetched.items():
            key = file_name(issuer)
            held = _held_copy(data.get(key), issuer)
            state = self.sources[issuer]
            if held is not None and held.jwks == jwks and now - held.fetched_at < RECONFIRM_AFTER:
                results[issuer] = UNCHANGED
                state.copy_fetched_at = held.fetched_at
            else:
                updates[key] = render_copy(PinnedCopy(issuer, now, jwks))
                results[issuer] = WRITTEN
        if updates and existing is None:
            await self.client.create(path_for("v1", "configmaps", self.namespace), {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.configmap, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "gitlab-sts",
                                        "app.kubernetes.io/component": "pinned-jwks"}},
                "data": updates,
            })
        elif updates:
            assert existing is not None
            version = str((existing.get("metadata") or {}).get("resourceVersion") or "")
            await self.client.merge_patch(path, {"metadata": {"resourceVersion": version}, "data": updates})
        for issuer, result in results.items():
            state = self.sources[issuer]
            state.failures, state.last_error, state.last_success = 0, None, now
            if result == WRITTEN:
                state.copy_fetched_at = now
                log.info("pinned JWKS of %s refreshed from %s (%d keys)", issuer, state.url,
                         len(fetched[issuer]["keys"]))
        return results

    def status(self) -> dict[str, Any]:
        """The pinned-jwks.json document of the status ConfigMap."""
        return {"configMap": self.configmap,
                "instances": {issuer: s.as_status() for issuer, s in sorted(self.sources.items())}}

    async def write_status(self) -> None:
        """Put pinned-jwks.json into the status ConfigMap when it changed (best effort)."""
        await self._status.write(self.status())


def _held_copy(text: Any, issuer: str) -> PinnedCopy | None:
    # A copy that does not parse (edited by hand, truncated) is replaced by the fresh fetch.
    if not isinstance(text, str):
        return None
    try:
        held = parse_copy(text)
    except ConfigError:
        return None
    return held if held.issuer == issuer else None


def refresher_for(settings: Settings, client: KubeClient, namespace: str, configmap: str,
                  status_configmap: str) -> PinnedRefresher | None:
    """A refresher when some instance names a pinnedJwksSource, else None."""
    if not instances_with_source(settings):
        return None
    return PinnedRefresher(settings, client, namespace, configmap, status_configmap)
