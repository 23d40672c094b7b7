"""Runs the atheris fuzz target briefly (the long runs are manual; see fuzz_exchange.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "fuzz_exchange.py"


def test_fuzz_exchange_briefly(tmp_path: Path) -> None:
    # atheris is a pinned dev dependency: if it is missing, this must fail, not skip.
    import atheris  # noqa: F401
    run = subprocess.run([sys.executable, str(TARGET), "-runs=3000", "-max_len=2048", "-seed=1", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
