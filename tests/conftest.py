"""Fixtures shared by more than one test folder."""

from __future__ import annotations

from collections.abc import Mapping
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
