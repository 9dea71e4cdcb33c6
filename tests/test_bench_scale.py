"""scripts/bench_scale.py runs end to end at small sizes (every answer it times is checked
against a brute force inside the script; the timed sizes are 100 k to 10 M, run by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_runs_and_reports_every_column(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_scale

    assert bench_scale.main(["--sizes", "500,1500", "--repeats", "10", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [row["items"] for row in result["rows"]] == [500, 1500]
    for row in result["rows"]:
        for key, _ in bench_scale.COLUMNS:
            assert row[key] > 0, key
