"""The reduced demo end to end: training, export, encoding, index, a real REST service."""

from __future__ import annotations

import json

import pytest

from hashkd.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    result = run_demo(
        DemoConfig(workdir=str(tmp_path), quick=True, bits=32, max_train=100, queries_to_show=3)
    )
    # every indexed image posted back to the (symmetric) service is found as itself at distance 0
    assert result["self_check"]["checked"] == 20
    assert result["self_check"]["found"] == result["self_check"]["checked"]
    # the asymmetric service answered every query with k=5 hits, nearest first
    assert len(result["hits"]) == 3
    for q in result["hits"]:
        distances = [h["distance"] for h in q["results"]]
        assert len(distances) == 5 and distances == sorted(distances)
    for row in result["table"].values():
        assert 0.0 <= row["map"] <= 1.0
    # every stage left its artifact, and the results were written
    for name in (
        "teacher",
        "student_nokd",
        "student_brcd",
        "student_brcd_onnx",
        "codes/db_teacher",
        "store",
    ):
        assert (tmp_path / name).exists(), name
    assert (
        json.loads((tmp_path / "demo_results.json").read_text())["self_check"]
        == result["self_check"]
    )
