"""scripts/bench_distill.py: the grid runs students in worker processes and resumes from results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hashkd.models import ModelConfig, build_model, save_artifact
from tests.conftest import TINY_CNN, TINY_VIT

ROOT = Path(__file__).resolve().parents[1]


def test_grid_with_two_jobs_then_resume(tmp_path):
    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    save_artifact(build_model(ModelConfig(bits=16, img_size=16, **TINY_VIT)), teacher)
    out = tmp_path / "grid"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_distill.py"),
        "--teacher",
        f"16={teacher}",
        "--data",
        "digits",
        "--student",
        TINY_CNN["backbone"],
        "--epochs",
        "1",
        "--max-train",
        "100",
        "--view-bank",
        "2",
        "--topk",
        "100",
        "--speed-seconds",
        "0.2",
        "--jobs",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--variants",
        "no KD (CIBHash only),BRCD: + bit mask (full)",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1500)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["model"] for r in rows) == [
        "BRCD: + bit mask (full)",
        "no KD (CIBHash only)",
        "teacher",
    ]
    for r in rows:
        assert r["bits"] == 16 and 0.0 <= r["map_sym"] <= 1.0 and r["params"] > 0
        assert (r["map_asym"] is None) == (r["model"] == "teacher")
        assert (r["train_s"] is None) == (r["model"] == "teacher")
    table = (out / "results.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| 16 |")]
    assert [line.split(" | ")[1] for line in body] == [
        "teacher",
        "no KD (CIBHash only)",
        "BRCD: + bit mask (full)",
    ]
    # Same --out again: every row is done, nothing is retrained.
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=1500)
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert '"model"' not in done.stdout  # no new row printed

    bad = subprocess.run(
        [*cmd[:-2], "--jobs", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "--jobs 0" in bad.stderr
