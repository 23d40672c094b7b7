"""Fixtures shared by more than one test folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from gitlab_sts.core import bindingdoc
from gitlab_sts.core.bindings import CompiledBinding


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The namespace/name of every bindings-document entry compiled from here on."""
    seen: list[str] = []
    real = bindingdoc.compile_binding

    def counting(namespace: str, name: str, spec: Mapping[str, Any], **kwargs: Any) -> CompiledBinding:
        seen.append(f"{namespace}/{name}")
        return real(namespace, name, spec, **kwargs)
    monkeypatch.setattr(bindingdoc, "compile_binding", counting)
    return seen


@pytest.fixture(scope="session", autouse=True)
def _session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The temp dir of this test session (and its servers) inside pytest's basetemp, which pytest prunes.

    The service keeps last-good copies and metrics in folders under the temp dir; hundreds of test services
    would otherwise leave hundreds of folders in /tmp on every run.
    """
    folder = str(tmp_path_factory.mktemp("tmp"))
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
