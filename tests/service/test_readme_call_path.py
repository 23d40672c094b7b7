"""The README's call path of a /v1/token request names functions that exist (the doc cannot drift silently)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
REF = re.compile(r"`((?:core|service)/[\w/]+)\.py:([\w.]+)`")


def test_every_function_the_call_path_names_exists() -> None:
    text = README.read_text()
    section = text[text.index("### One `/v1/token` request"):]
    section = section[:section.index("\n## ")] if "\n## " in section else section
    refs = REF.findall(section)
    assert len(refs) >= 25, refs
    for path, dotted in refs:
        module = importlib.import_module("gitlab_sts." + path.replace("/", "."))
        target: object = module
        for name in dotted.split("."):
            assert hasattr(target, name), f"README names {path}.py:{dotted}, which does not exist"
            target = getattr(target, name)
        assert callable(target), f"{path}.py:{dotted} is not a function or class"
