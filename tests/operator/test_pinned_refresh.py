"""Refreshing pinned GitLab key sets: the operator (over KMock) fetches pinnedJwksSource from a loopback HTTP server
and writes the pinned-JWKS ConfigMap only when the content changes; bad answers are refused and the copy kept."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc.jwk import ECKey
from operator_helpers import T0, Clock, metric, settings

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.pinnedjwks import file_name, parse_copy
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import Endpoint, KubeClient, path_for
from gitlab_sts.operator.pinnedrefresh import CONFLICT, FAILED, STATUS_KEY, UNCHANGED, WRITTEN
from gitlab_sts.operator.runtime import Runtime, build_runtime

ISSUER = "https://gitlab.airgap.example"
PINNED_CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-pinned-jwks")
STATUS_CM = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-status")


def public_jwk(kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = ECKey.generate_key("P-256").as_dict(private=False)
    return {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}


class Source:
    """A loopback HTTP server answering whatever the test sets (status, body, headers)."""

    def __init__(self) -> None:
        self.status, self.body, self.headers = 200, b"{}", {"Content-Type": "application/json"}
        self.hits = 0
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                source.hits += 1
                self.send_response(source.status)
                for name, value in source.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(source.body)))
                self.end_headers()
                self.wfile.write(source.body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/discovery/keys"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, document: Any, status: int = 200, **headers: str) -> None:
        self.body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.status, self.headers = status, {"Content-Type": "application/json", **headers}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def source() -> Iterator[Source]:
    s = Source()
    yield s
    s.stop()


def make_runtime(k8s: Any, url: str, clock: Clock) -> Runtime:
    text = f"""
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
  - issuer: {ISSUER}
    audiences: [https://sts.example.com]
    jwks: {{"keys": [{json.dumps(public_jwk("settings-copy"))}]}}
    pinnedAt: "2029-06-01T00:00:00Z"
    pinnedJwksSource: {url}
"""
    conf = OperatorConfig(namespace="gitlab-sts", debounce_seconds=0)
    return build_runtime(conf, settings(text), Endpoint(server=str(k8s.server.url)), clock=clock)


async def held(client: KubeClient) -> tuple[dict[str, Any], str]:
    """The copy in the ConfigMap (parsed) and the ConfigMap's resourceVersion."""
    cm = await client.get(PINNED_CM)
    copy = parse_copy(cm["data"][file_name(ISSUER)])
    return {"fetchedAt": copy.fetched_at, "jwks": copy.jwks, "issuer": copy.issuer}, cm["metadata"]["resourceVersion"]


async def status(client: KubeClient) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((await client.get(STATUS_CM))["data"][STATUS_KEY])["instances"][ISSUER]
    return doc


@pytest.mark.asyncio
async def test_fetch_write_only_on_change_and_refuse_bad_content(k8s: Any, client: KubeClient,
                                                                 source: Source) -> None:
    clock = Clock()
    rt = make_runtime(k8s, source.url, clock)
    assert rt.pinned is not None
    first = {"keys": [public_jwk("gitlab-1")]}
    source.serve(first)
    try:
        # First pass: the ConfigMap is created with the copy and when it was fetched.
        assert await rt.pinned.refresh(clock.now) == {ISSUER: WRITTEN}
        copy, version = await held(client)
        assert copy == {"issuer": ISSUER, "fetchedAt": T0, "jwks": first}
        cm = await client.get(PINNED_CM)
        assert list(cm["data"]) == [file_name(ISSUER)]
        assert (await status(client))["lastSuccessAt"] == "2030-01-01T00:00:00Z"
        assert metric("pinned_jwks_fetched_timestamp_seconds", issuer=ISSUER) == T0.timestamp()

        # Same content an hour later: nothing is written (same resourceVersion, same fetchedAt).
        clock.now = T0 + timedelta(hours=1)
        assert await rt.pinned.refresh(clock.now) == {ISSUER: UNCHANGED}
        assert await held(client) == (copy, version)

        # GitLab's admin rotated the key: the new set replaces the copy.
        second = {"keys": [public_jwk("gitlab-2"), public_jwk("gitlab-1b")]}
        source.serve(second)
        clock.now = T0 + timedelta(hours=2)
        assert await rt.pinned.refresh(clock.now) == {ISSUER: WRITTEN}
        copy2, version2 = await held(client)
        assert copy2["jwks"] == second and copy2["fetchedAt"] == clock.now and version2 != version

        # Bad answers are refused one by one; the last good copy stays untouched each time.
        private = ECKey.generate_key("P-256").as_dict(private=True)
        bad_answers: list[tuple[Any, int, str]] = [
            ({"keys": [{**private, "kid": "leaked"}]}, 200, "private key members (d)"),
            ({"keys": []}, 200, "no keys"),
            (b"<html>maintenance</html>", 200, "not JSON"),
            ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, 200, "kty must be RSA or EC"),
            ({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}, 200, "cannot be imported"),
            (b"x" * (300 * 1024), 200, "larger than"),
            (second, 500, "HTTP 500"),
            (second, 302, "HTTP 302"),  # a redirect is not followed
        ]
        for attempt, (body, code, needle) in enumerate(bad_answers, 1):
            source.serve(body, code, Location="http://127.0.0.1:1/elsewhere")
            clock.now += timedelta(minutes=10)
            assert await rt.pinned.refresh(clock.now) == {ISSUER: FAILED}, needle
            assert await held(client) == (copy2, version2)
            st = await status(client)
            assert needle in st["lastError"] and st["consecutiveFailures"] == attempt
            assert st["copyFetchedAt"] == "2030-01-01T02:00:00Z" and st["lastSuccessAt"] == "2030-01-01T02:00:00Z"
            assert metric("pinned_jwks_refresh_failures", issuer=ISSUER) == attempt
        assert "leaked" not in json.dumps(await client.get(STATUS_CM))
        assert rt.pinned.failing and rt.healthy()["pinnedJwksError"]

        # Back to normal: the failure count resets; same content is not rewritten.
        source.serve(second)
        clock.now += timedelta(minutes=10)
        assert await rt.pinned.refresh(clock.now) == {ISSUER: UNCHANGED}
        assert (await status(client))["consecutiveFailures"] == 0 and not rt.pinned.failing
        assert metric("pinned_jwks_refresh_failures", issuer=ISSUER) == 0

        # An unchanged key set is confirmed (fetchedAt moved on) once a day, so its age means "last confirmed".
        clock.now = T0 + timedelta(days=1, hours=3)
        assert await rt.pinned.refresh(clock.now) == {ISSUER: WRITTEN}
        copy3, _ = await held(client)
        assert copy3["jwks"] == second and copy3["fetchedAt"] == clock.now
    finally:
        await rt.client.close()


@pytest.mark.asyncio
async def test_write_is_conditioned_on_resource_version(k8s: Any, client: KubeClient, source: Source) -> None:
    clock = Clock()
    rt = make_runtime(k8s, source.url, clock)
    assert rt.pinned is not None
    source.serve({"keys": [public_jwk("gitlab-1")]})
    try:
        assert await rt.pinned.refresh(clock.now) == {ISSUER: WRITTEN}
        before, _ = await held(client)
        source.serve({"keys": [public_jwk("gitlab-2")]})
        original_get = rt.client.get_or_none

        async def racing_get(path: str) -> dict[str, Any] | None:
            got = await original_get(path)
            if path.endswith("gitlab-sts-pinned-jwks"):
                # Another writer changes the ConfigMap after we read it.
                await rt.client.merge_patch(PINNED_CM, {"metadata": {"annotations": {"touched": "yes"}}})
            return got

        rt.client.get_or_none = racing_get  # type: ignore[method-assign]
        clock.now += timedelta(hours=1)
        assert await rt.pinned.refresh(clock.now) == {ISSUER: CONFLICT}
        rt.client.get_or_none = original_get  # type: ignore[method-assign]
        assert (await held(client))[0] == before  # nothing half-written
        assert await rt.pinned.refresh(clock.now) == {ISSUER: WRITTEN}
        assert (await held(client))[0]["jwks"]["keys"][0]["kid"] == "gitlab-2"
    finally:
        await rt.client.close()


@pytest.mark.asyncio
async def test_no_refresher_without_a_source(k8s: Any) -> None:
    conf = OperatorConfig(namespace="gitlab-sts")
    rt = build_runtime(conf, settings(), Endpoint(server=str(k8s.server.url)))
    assert rt.pinned is None and rt.healthy()["pinnedJwksError"] is None
    await rt.client.close()


def test_settings_accept_a_source_only_with_a_pinned_key_set() -> None:
    base = "issuer: https://sts.example.com\ngitlab:\n  - issuer: https://gitlab.example.com\n" \
           "    audiences: [https://sts.example.com]\n"
    with pytest.raises(ConfigError, match="pinnedJwksSource refreshes a pinned key set"):
        settings(base + "    pinnedJwksSource: https://keys.internal/gitlab.json\n")
    jwks = '    jwks: {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}\n'
    with pytest.raises(ConfigError, match="pinnedJwksSource must use https"):
        settings(base + jwks + "    pinnedJwksSource: http://keys.internal/gitlab.json\n")
    ok = settings(base + jwks + "    pinnedJwksSource: https://keys.internal/gitlab.json\n")
    assert ok.gitlab[0].pinned_jwks_source == "https://keys.internal/gitlab.json"
