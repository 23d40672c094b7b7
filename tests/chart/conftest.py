"""Fixtures for the chart tests: real Helm 3 and Helm 4 binaries and a render helper."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import tools

VALUES_DIR = Path(__file__).parent / "values"
MINIMAL = VALUES_DIR / "minimal.yaml"
ALL_FEATURES = VALUES_DIR / "all-features.yaml"
RELEASE, NAMESPACE = "gitlab-sts", "gitlab-sts"


class RenderError(AssertionError):
    """helm refused the values (schema or a `fail` in the chart)."""


@dataclass(frozen=True)
class Helm:
    """One helm binary and how to render the chart with it."""

    layer: tools.Layer

    @property
    def major(self) -> int:
        return int(self.layer.helm_version.lstrip("v").split(".")[0])

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = tools.helm_env() | {"KUBECONFIG": "/nonexistent"}  # never reach a cluster from unit tests
        proc = subprocess.run([str(self.layer.helm), *args], capture_output=True, text=True, env=env, timeout=120)
        if check and proc.returncode != 0:
            raise RenderError(f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def _value_args(self, files: Iterable[Path], sets: dict[str, str] | None) -> list[str]:
        args: list[str] = []
        for f in files:
            args += ["-f", str(f)]
        for k, v in (sets or {}).items():
            args += ["--set-json" if v.startswith(("{", "[")) else "--set", f"{k}={v}"]
        return args

    def _template(self, files: Iterable[Path], sets: dict[str, str] | None, *, release: str = RELEASE,
                  namespace: str = NAMESPACE, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("template", release, str(tools.CHART), "--namespace", namespace,
                        *self._value_args(files, sets), check=check)

    def template(self, *files: Path, sets: dict[str, str] | None = None, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """Rendered objects (empty documents dropped)."""
        out = self._template(files, sets, release=release, namespace=namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def template_text(self, *files: Path, sets: dict[str, str] | None = None) -> str:
        return self._template(files, sets).stdout

    def error(self, *files: Path, sets: dict[str, str] | None = None) -> str:
        """The error helm prints for values it must refuse."""
        proc = self._template(files, sets, check=False)
        assert proc.returncode != 0, "helm accepted values it should refuse"
        return proc.stderr

    def notes(self, *files: Path, sets: dict[str, str] | None = None) -> str:
        """NOTES.txt rendered with these values.

        Helm 3's `install --dry-run=client` still asks a cluster for its version, so the notes are rendered
        through `helm template` from a copy of the chart in which a template wraps NOTES.txt in a define.
        """
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / "gitlab-sts"
            shutil.copytree(tools.CHART, chart)
            notes = (chart / "templates" / "NOTES.txt").read_text()
            (chart / "templates" / "zz-notes.yaml").write_text(
                '{{- define "test.notes" -}}\n' + notes + '\n{{- end -}}\n'
                'notes: {{ include "test.notes" . | toJson }}\n')
            out = self.run("template", RELEASE, str(chart), "--namespace", NAMESPACE,
                           "--show-only", "templates/zz-notes.yaml", *self._value_args(files, sets)).stdout
        return str(yaml.safe_load(out)["notes"])

    def install_notes(self, *files: Path) -> str:
        """NOTES.txt as `helm install --dry-run=client` prints it (works without a cluster on Helm 4)."""
        out = self.run("install", RELEASE, str(tools.CHART), "--namespace", NAMESPACE, "--dry-run=client",
                       "-o", "json", *self._value_args(files, None)).stdout
        return str(json.loads(out)["info"]["notes"])


@pytest.fixture(scope="session", params=sorted(tools.LAYERS))
def helm(request: pytest.FixtureRequest) -> Helm:
    """Each pinned helm (3.x and 4.x); a download failure fails the tests, it never skips them."""
    return Helm(tools.layer(request.param))


@pytest.fixture(scope="session")
def helm3() -> Helm:
    """Helm 3 only (for tests where the helm version does not matter)."""
    return Helm(tools.layer("helm3"))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of that kind (and name)."""
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    """Sorted kind/name of every object."""
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
