"""One measured ES256 speed-up everywhere: the median ratio of bench/results.json, quoted the same in each doc."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "charts/gitlab-sts/values.yaml", "charts/gitlab-sts/README.md", "bench/README.md"]
# "1.43×", "1.43x" next to ES256 (same sentence): a speed-up quote.
QUOTE = re.compile(r"(\d+\.\d+)\s?[x×]")


def test_every_es256_speedup_quote_is_the_measured_median() -> None:
    measured = json.loads((ROOT / "bench/results.json").read_text())["es256_speedup"]["token_rps_ratio_median"]
    figure = f"{measured:.2f}"
    quotes: dict[str, set[str]] = {}
    for name in DOCS:
        text = (ROOT / name).read_text()
        for sentence in re.split(r"(?<=[.;])\s|\n\n", text):
            if "ES256" in sentence:
                quotes.setdefault(name, set()).update(QUOTE.findall(sentence))
    assert {n for n, q in quotes.items() if q} == set(DOCS), quotes  # each document quotes it
    assert {q for qs in quotes.values() for q in qs} == {figure}, quotes
