"""Runs the atheris fuzz target briefly (the long runs are manual; see fuzz_exchange.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).resolve().parent / "fuzz_exchange.py"


def test_fuzz_exchange_briefly(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (it needs a prebuilt wheel for this Python)")
    run = subprocess.run([sys.executable, str(TARGET), "-runs=3000", "-max_len=2048", "-seed=1", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
