"""scripts/bench_student_cost.py: costs and measured throughput side by side, ratios to the first."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hashkd.models import load_artifact, model_cost
from tests.conftest import save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_student_cost", ROOT / "scripts" / "bench_student_cost.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_an_artifact_and_an_architecture_side_by_side(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher", bits=16, img_size=16)
    out = tmp_path / "cost.json"
    argv = [
        "--model", f"teacher={teacher}", "--model", "student=resnet10t:linear",
        "--bits", "16", "--img-size", "16", "--batch", "4", "--seconds", "0.05",
        "--rounds", "2", "--json-out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    t, s = rows["teacher"], rows["student"]
    assert t["flops"] == model_cost(load_artifact(teacher))["flops"]  # read from the artifact
    assert (t["flops_ratio"], t["encode_speedup"], t["train_speedup"]) == (1.0, 1.0, 1.0)
    assert s["flops_ratio"] == pytest.approx(t["flops"] / s["flops"])
    # the speedup is the ratio of the medians of the rounds
    assert s["encode_speedup"] == pytest.approx(sorted(s["encode"])[1] / sorted(t["encode"])[1])
    assert len(s["encode"]) == len(s["train"]) == 2 and min(s["encode"] + s["train"]) > 0


@pytest.mark.parametrize("spec", ["student", "=resnet10t", "student="])
def test_a_bad_model_spec_is_refused_naming_it(capsys, spec):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model", spec, "--seconds", "0.01"])
    assert exc.value.code == 2 and repr(spec) in capsys.readouterr().err
