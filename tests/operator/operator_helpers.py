"""Shared builders for operator tests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gitlab_sts.core.keys import ManagedKey, generate_key
from gitlab_sts.core.settings import Settings, parse_settings
from gitlab_sts.operator import metrics
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.kube import ApiError, Endpoint
from gitlab_sts.operator.runtime import Runtime, build_runtime

T0 = datetime(2030, 1, 1, tzinfo=UTC)

SETTINGS_YAML = """
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
tokens: {lifetime: 900, maxLifetime: 3600}
keys: {rotationPeriod: 604800, prePublication: 86400, clockSkew: 300}
"""

GUARDED_YAML = SETTINGS_YAML + """
guard:
  - namespaces: ["team-*"]
    accounts: ["123456789012"]
  - namespaces: ["platform"]
    roleArns: ["arn:aws:iam::*:role/platform-*"]
"""


def settings(text: str = SETTINGS_YAML) -> Settings:
    """Parsed test settings."""
    return parse_settings(text)


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid binding spec; keyword arguments replace top-level parts."""
    base: dict[str, Any] = {
        "project": {"path": "platform/payments"},
        "rules": {"refs": ["main"], "protectedRef": True},
        "aws": {"roleArn": "arn:aws:iam::123456789012:role/payments-deploy"},
    }
    base.update(copy.deepcopy(overrides))
    return base


def manifest(namespace: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A GitLabAWSBinding object as kubectl would send it."""
    return {"apiVersion": "gitlab-sts.io/v1alpha1", "kind": "GitLabAWSBinding",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": spec() if body is None else body}


def es256(alg: str, **kw: Any) -> ManagedKey:
    """A key generator for runtimes: fast ES256 keys whatever the policy asks (the algorithm is not what is tested)."""
    return generate_key("ES256", **kw)


class Clock:
    """An injected clock the test moves; starts at T0."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def metric(name: str, **labels: str) -> float | None:
    """A sample of the operator's registry (name without the gitlab_sts_operator_ prefix)."""
    return metrics.REGISTRY.get_sample_value("gitlab_sts_operator_" + name, labels or None)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Await check() until it passes (generous by default: the machine may be loaded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, KeyError, ApiError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_operator(k8s: Any, cfg: OperatorConfig) -> AsyncIterator[Runtime]:
    """The whole operator runtime (watch, status workers, writer, key loop) against KMock, seeded, then stopped."""
    rt = build_runtime(cfg, settings(), Endpoint(server=str(k8s.server.url)), new_key=es256)
    await rt.start()
    try:
        assert rt.watcher is not None
        await asyncio.wait_for(rt.watcher.seeded(), 30)
        yield rt
    finally:
        await rt.stop()


def kmock_kubeconfig(k8s: Any, path: Path) -> Path:
    """Write a kubeconfig (token user) that points at the KMock server; returns its path."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.server.url).rstrip("/")}}],
        "users": [{"name": "u", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}],
    }))
    return path
