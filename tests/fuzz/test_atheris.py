"""Runs the atheris fuzz target briefly (the long runs are manual; see fuzz_exchange.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent / "fuzz_exchange.py"


def test_fuzz_exchange_briefly(tmp_path: Path) -> None:
    # atheris is a pinned dev dependency: if it is missing, this must fail, not skip.
    import atheris  # noqa: F401
    corpus, app_dir = tmp_path / "corpus", tmp_path / "app"
    corpus.mkdir()
    app_dir.mkdir()
    run = subprocess.run([sys.executable, str(TARGET), "-runs=3000", "-max_len=2048", "-seed=1", str(corpus)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GITLAB_STS_FUZZ_DIR": str(app_dir)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
    assert (app_dir / "settings.yaml").exists()  # the target's config went to the folder pytest removes
