"""`python -m gitlab_sts.operator` as a process against KMock: a healthy start logs no errors; bad settings exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import SETTINGS_YAML, kmock_kubeconfig, manifest
from test_convergence import eventually, in_config, ready

from gitlab_sts.operator.kube import KubeClient, path_for
from gitlab_sts.operator.reconcile import PLURAL

API = "gitlab-sts.io/v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_env(k8s: Any, tmp_path: Path) -> dict[str, str]:
    kubeconfig = kmock_kubeconfig(k8s, tmp_path / "kubeconfig")
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "GITLAB_STS_CONFIG_DIR": str(tmp_path),
            "GITLAB_STS_NAMESPACE": "gitlab-sts", "GITLAB_STS_OPERATOR_METRICS_PORT": str(free_port()),
            "GITLAB_STS_OPERATOR_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
            "GITLAB_STS_OPERATOR_DEBOUNCE_SECONDS": "0.1"}


def levels(output: str) -> list[tuple[str, str]]:
    """(level, message) of every log line (kopf's JSON format; anything else counts as an error)."""
    found = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            found.append(("unparsed", line))
            continue
        found.append((str(record.get("severity") or record.get("level") or "?").lower(), str(record.get("message"))))
    return found


@pytest.mark.asyncio
async def test_a_healthy_start_logs_no_errors(k8s: Any, client: KubeClient, tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(SETTINGS_YAML)
    await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "one"))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gitlab_sts.operator",
                                                env=operator_env(k8s, tmp_path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        await eventually(lambda: ready(client, "team-a", "one"), timeout=60)
        await eventually(lambda: in_config(client, "team-a/one"), timeout=60)
        await client.create(path_for(API, PLURAL, "team-a"), manifest("team-a", "two"))
        await eventually(lambda: ready(client, "team-a", "two"), timeout=60)
        # Ready and the ConfigMap write are separate steps: wait for the write the last assertion reads.
        await eventually(lambda: in_config(client, "team-a/one", "team-a/two"), timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines = levels(out.decode())
    bad = [line for line in lines if line[0] not in ("debug", "info", "warning")]
    assert not bad, f"not quiet: {bad}"
    messages = [m for _level, m in lines]
    assert not any("succeeded" in m and m.startswith("Handler") for m in messages), messages
    writes = [m for m in messages if m.startswith("wrote bindings ConfigMap")]
    assert writes and all(m.count("bindings,") == 1 for m in writes)
    assert writes[-1].split(": ", 1)[1].startswith("2 bindings"), writes


@pytest.mark.asyncio
@pytest.mark.parametrize("text", [None, "issuer: [not, a, url]\n", "{{{ not yaml"])
async def test_unusable_settings_stop_the_operator_with_exit_code_2(k8s: Any, tmp_path: Path,
                                                                    text: str | None) -> None:
    if text is not None:
        (tmp_path / "settings.yaml").write_text(text)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gitlab_sts.operator",
                                                env=operator_env(k8s, tmp_path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out.decode()
    lines = levels(out.decode())
    assert len(lines) == 1, lines
    level, message = lines[0]
    assert level in ("critical", "fatal")  # kopf's JSON format says fatal
    assert "settings" in message and ("cannot read" in message or "invalid settings" in message), message


@pytest.mark.parametrize(("user", "needs"), [
    ({"token": "t"}, False),
    ({"client-certificate-data": "x", "client-key-data": "y"}, False),
    ({"exec": {"command": "aws"}}, True),
    ({"auth-provider": {"name": "oidc"}}, True),
])
def test_only_exec_or_auth_provider_kubeconfigs_need_the_client_library(tmp_path: Path, user: dict[str, Any],
                                                                        needs: bool) -> None:
    from gitlab_sts.operator.handlers import kubeconfig_needs_client

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({"current-context": "c", "contexts": [{"name": "c", "context": {"user": "u"}}],
                                    "users": [{"name": "u", "user": user}]}))
    assert kubeconfig_needs_client({"KUBECONFIG": str(path)}) is needs
    assert kubeconfig_needs_client({"KUBECONFIG": str(tmp_path / "missing")}) is True  # unclear: the library decides


def test_the_entry_point_does_not_import_the_kubernetes_client_library(tmp_path: Path) -> None:
    # ~80 MiB of RSS that kopf would import only to see whether the library is installed.
    code = ("import runpy, sys\n"
            "sys.argv = ['gitlab_sts.operator']\n"
            "try:\n    runpy.run_module('gitlab_sts.operator', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('kubernetes' in sys.modules)\n")
    env = {**os.environ, "GITLAB_STS_CONFIG_DIR": str(tmp_path)}  # no settings.yaml: exits 2 after the imports
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out
