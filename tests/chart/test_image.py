"""The container image without a Docker engine: hadolint, and the Dockerfile's install and entrypoints for real.

The builder stage runs docker/install.sh on the wheel from `pip wheel --no-deps .`; these tests run the same
script into a fresh virtualenv (dependencies from a wheelhouse cached under build/image-test) and start both
entrypoints of docker/entrypoint.sh from it: the service over HTTPS, the operator up to its metrics port.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitlab_sts.core.keys import development_ring, render_keyring
from gitlab_sts.testing.tls import write_self_signed

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "image-test"
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
VALUES = yaml.safe_load((ROOT / "charts/gitlab-sts/values.yaml").read_text())

pytestmark = pytest.mark.timeout(400)


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _final_stage() -> list[str]:
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    instructions = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max(i for i, ln in enumerate(instructions) if ln.startswith("FROM "))
    return instructions[last_from:]


# --- static checks ---------------------------------------------------------------------------------------

def test_hadolint_is_clean() -> None:
    proc = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_config_is_strict(tmp_path: Path) -> None:
    """The config is really read: a missing OCI label and an unpinned apt package both fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\nUSER 10001\n")
    proc = subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3008" in proc.stdout  # pin versions in apt-get install
    assert "DL3049" in proc.stdout  # label org.opencontainers.image.title is missing


def test_final_stage_is_slim_non_root_and_matches_the_chart() -> None:
    final = _final_stage()
    assert final[0] == "FROM python:3.11-slim"
    froms = re.findall(r"^FROM (.+)$", DOCKERFILE.read_text(), flags=re.M)
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    text = "\n".join(final)
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    # No compilers or package installs in the runtime stage.
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", text)
    uid = int(re.search(r"ARG UID=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert "USER ${UID}:${UID}" in text
    assert uid == VALUES["podSecurityContext"]["runAsUser"] == VALUES["containerSecurityContext"]["runAsUser"]
    assert uid >= 10000
    assert 'ENTRYPOINT ["/usr/local/bin/gitlab-sts-entrypoint"]' in text
    assert 'CMD ["service"]' in text


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.M)
    sources = [s for line in copied for s in line.split()]
    for src in sources:
        assert f"!{src}" in ignore, f"{src} is COPYed but excluded by .dockerignore"


# --- the install steps and the entrypoints, for real -----------------------------------------------------

@pytest.fixture(scope="module")
def wheel() -> Path:
    """`pip wheel --no-deps .`, as the builder stage does."""
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    _run([sys.executable, "-P", "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(ROOT)])
    (found,) = dist.glob("gitlab_sts-*.whl")
    return found


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return sorted(ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("Requires-Dist:") and "extra ==" not in ln)


@pytest.fixture(scope="module")
def wheelhouse(wheel: Path) -> Path:
    """The wheel's runtime dependencies, downloaded once per set of requirements (the image gets them from PyPI)."""
    reqs = _requirements(wheel)
    house = WORK / ("wheelhouse-" + hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12])
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(house), *reqs])
        (house / ".complete").touch()
    return house


@pytest.fixture(scope="module")
def venv(wheel: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv made by docker/install.sh, offline from the wheelhouse."""
    target = tmp_path_factory.mktemp("image") / "venv"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_QUIET": "1"}
    proc = _run(["sh", str(ROOT / "docker/install.sh"), str(target), str(wheel)], env=env)
    assert "gunicorn settings:" in proc.stdout
    return target


def _image_env(venv: Path) -> dict[str, str]:
    """The runtime stage's environment, with /opt/venv pointing at the test's venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GITLAB_STS_", "PROMETHEUS_", "VIRTUAL_ENV", "PYTHON", "KUBECONFIG"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_installed_venv_has_both_programs_and_the_conf_where_the_dockerfile_says(venv: Path) -> None:
    for exe in ("gunicorn", "kopf", "gitlab-sts", "python"):
        assert (venv / "bin" / exe).exists()
    conf = re.search(r"GITLAB_STS_GUNICORN_CONF=(\S+)", DOCKERFILE.read_text()).group(1)  # type: ignore[union-attr]
    assert conf.startswith("/opt/venv/")
    assert (venv / conf.removeprefix("/opt/venv/")).is_file()
    # The project's own dev tools are not in the runtime environment.
    assert not (venv / "bin" / "pytest").exists()


def test_the_image_carries_the_job_client_where_the_dockerfile_says(venv: Path) -> None:
    client = re.search(r"GITLAB_STS_CLIENT=(\S+)", DOCKERFILE.read_text()).group(1)  # type: ignore[union-attr]
    assert client.startswith("/opt/venv/")
    installed = venv / client.removeprefix("/opt/venv/")
    assert installed.read_bytes() == (ROOT / "cli/src/gitlab_sts/login.py").read_bytes()
    assert client in (ROOT / "docs/job-client.md").read_text()


def test_check_crd_of_the_installed_package_from_a_bindings_repository(venv: Path, tmp_path: Path) -> None:
    # The wheel carries the CRD (package data): no repository checkout next to the command.
    shutil.copytree(ROOT / "examples/bindings", tmp_path / "bindings")
    proc = subprocess.run([str(venv / "bin/gitlab-sts"), "check", "--bindings", "bindings", "--crd"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_image_env(venv))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok      team-payments/deploy-staging" in proc.stdout


def test_service_entrypoint_refuses_to_start_on_a_broken_first_load(venv: Path, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "bindings").mkdir(parents=True)
    (etc / "settings.yaml").write_text("issuer: https://sts.example.com\ngitlab: []\n")
    env = _image_env(venv) | {"GITLAB_STS_CONFIG_DIR": str(etc), "GITLAB_STS_BIND": f"127.0.0.1:{_free_port()}",
                              "GITLAB_STS_STATE_DIR": str(tmp_path / "state"),
                              "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    proc = subprocess.run(["sh", str(ROOT / "docker/entrypoint.sh"), "service"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    # Kubernetes shows CrashLoopBackOff, and the log says which file and field.
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"{etc / 'settings.yaml'}: gitlab" in proc.stderr
    assert f"{etc / 'keys' / 'keyset.json'}: cannot read: No such file or directory" in proc.stderr


def _get(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:  # noqa: S310 - loopback only
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _wait_for(proc: subprocess.Popen[str], probe: object, seconds: float = 45) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process exited with {proc.returncode}:\n{out[-4000:]}")
        try:
            if probe():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail("timed out waiting for the process to answer")


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_service_entrypoint_serves_https_from_the_chart_layout(venv: Path, tmp_path: Path,
                                                                stop: list[subprocess.Popen[str]]) -> None:
    # The chart's layout: settings/, bindings/ (here: example manifests), keys/, tls/, a state dir.
    etc = tmp_path / "etc"
    for sub in ("settings", "bindings", "keys", "tls"):
        (etc / sub).mkdir(parents=True)
    (etc / "settings/settings.yaml").write_text(yaml.safe_dump({
        "issuer": "https://sts.example.com",
        "gitlab": [{"issuer": "https://gitlab.example.com", "audiences": ["https://sts.example.com"]}],
    }))
    for manifest in (ROOT / "examples/bindings").glob("*.yaml"):
        shutil.copy(manifest, etc / "bindings" / manifest.name)
    (etc / "keys/keyset.json").write_text(render_keyring(development_ring(dt.datetime.now(dt.UTC))))
    crt, key = write_self_signed(etc / "tls/tls.crt", etc / "tls/tls.key", "localhost")
    port = _free_port()
    env = _image_env(venv) | {
        "GITLAB_STS_CONFIG_DIR": str(etc),
        "GITLAB_STS_SETTINGS": str(etc / "settings/settings.yaml"),
        "GITLAB_STS_BINDINGS_DIR": str(etc / "bindings"),
        "GITLAB_STS_KEYS_DIR": str(etc / "keys"),
        "GITLAB_STS_STATE_DIR": str(tmp_path / "state"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "GITLAB_STS_BIND": f"127.0.0.1:{port}",
        "GITLAB_STS_WORKERS": "2",
        "GITLAB_STS_WORKER_CONNECTIONS": "1000",
        "GITLAB_STS_TLS_CERT": str(crt),
        "GITLAB_STS_TLS_KEY": str(key),
    }
    proc = subprocess.Popen(["sh", str(ROOT / "docker/entrypoint.sh"), "service"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop.append(proc)
    ctx = ssl.create_default_context(cafile=str(crt))
    base = f"https://localhost:{port}"
    _wait_for(proc, lambda: _get(base + "/healthz", ctx)[0] == 200)
    status, body = _get(base + "/readyz", ctx)
    assert status == 200, body
    assert json.loads(body)["bindings"] == len(list((etc / "bindings").glob("*.yaml")))
    status, body = _get(base + "/.well-known/openid-configuration", ctx)
    assert status == 200
    assert json.loads(body)["issuer"] == "https://sts.example.com"
    status, body = _get(base + "/metrics", ctx)
    assert status == 200
    assert b"gitlab_sts_" in body
    # A renewed certificate (the Secret's files replaced) is served to new connections without a restart.
    before = ssl.get_server_certificate(("127.0.0.1", port))
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new_crt, new_key = write_self_signed(renewed / "tls.crt", renewed / "tls.key", "localhost")
    os.replace(new_key, key)
    os.replace(new_crt, crt)
    after = ssl.get_server_certificate(("127.0.0.1", port))
    assert after != before
    assert after.strip() == crt.read_text().strip()
    # Plain HTTP is refused on the TLS port.
    with pytest.raises((OSError, urllib.error.URLError)):
        _get(f"http://127.0.0.1:{port}/healthz")
    assert any((tmp_path / "metrics").iterdir()), "multiprocess metrics files go to PROMETHEUS_MULTIPROC_DIR"


def test_operator_entrypoint_starts_kopf_with_the_chart_environment(venv: Path, tmp_path: Path,
                                                                    stop: list[subprocess.Popen[str]]) -> None:
    """No cluster: the API server address is a closed port. The operator still boots kopf, reads
    settings.yaml from GITLAB_STS_CONFIG_DIR and opens its metrics and liveness ports from the environment."""
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump({
        "issuer": "https://sts.example.com",
        "gitlab": [{"issuer": "https://gitlab.example.com", "audiences": ["https://sts.example.com"]}],
    }))
    closed = _free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": f"http://127.0.0.1:{closed}"}}],
        "users": [{"name": "none", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    }))
    metrics, liveness = _free_port(), _free_port()
    env = _image_env(venv) | {
        "KUBECONFIG": str(kubeconfig), "GITLAB_STS_CONFIG_DIR": str(tmp_path),
        "GITLAB_STS_NAMESPACE": "gitlab-sts", "GITLAB_STS_WATCH_NAMESPACES": "team-a",
        "GITLAB_STS_OPERATOR_METRICS_PORT": str(metrics),
        "GITLAB_STS_OPERATOR_LIVENESS": f"http://127.0.0.1:{liveness}/healthz",
    }
    proc = subprocess.Popen(["sh", str(ROOT / "docker/entrypoint.sh"), "operator"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop.append(proc)
    _wait_for(proc, lambda: b"gitlab_sts_operator_" in _get(f"http://127.0.0.1:{metrics}/metrics")[1])
    # The other programs run through the same entrypoint.
    out = _run(["sh", str(ROOT / "docker/entrypoint.sh"), "kopf", "run", "--help"], env=_image_env(venv))
    assert "--liveness" in out.stdout and "--standalone" in out.stdout
