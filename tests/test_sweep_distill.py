"""scripts/sweep_distill.py: grid parsing, the validation-split table and a tiny real sweep."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import TINY_CNN, save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "sweep_distill", ROOT / "scripts" / "sweep_distill.py"
)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_parse_grid_is_the_product_of_the_axes_in_order():
    grid = sweep.parse_grid("brcd.margin=0.1,0.5; brcd.mask_mode=anchor,own")
    assert grid == [
        {"brcd.margin": "0.1", "brcd.mask_mode": "anchor"},
        {"brcd.margin": "0.1", "brcd.mask_mode": "own"},
        {"brcd.margin": "0.5", "brcd.mask_mode": "anchor"},
        {"brcd.margin": "0.5", "brcd.mask_mode": "own"},
    ]
    for bad in ("", "margin", "a=", "=1"):
        with pytest.raises(ValueError, match="not valid|empty"):
            sweep.parse_grid(bad)


def test_summary_ranks_settings_by_mean_validation_map():
    rows = [
        {
            "setting": "w=1",
            "seed": 0,
            "val_map": 0.2,
            "val_collapsed": False,
            "kept_fraction": None,
        },
        {"setting": "w=1", "seed": 1, "val_map": 0.4, "val_collapsed": True, "kept_fraction": None},
        {
            "setting": "w=9",
            "seed": 0,
            "val_map": 0.35,
            "val_collapsed": False,
            "kept_fraction": 0.5,
        },
    ]
    lines = sweep.summarise(rows).splitlines()
    # hand-worked: w=9 mean 0.35 (n=1) before w=1 mean 0.30, sample std 0.1414
    assert lines[2] == "| w=9 | 1 | 0.3500 | 0: 0.3500 | 0 | 0.50 | - |"  # one seed: no spread
    assert lines[3] == "| w=1 | 2 | 0.3000 ± 0.1414 | 0: 0.2000, 1: 0.4000 | 1 | - | - |"
    rows[2]["brcd_k"] = 3
    assert (
        sweep.summarise(rows).splitlines()[2] == "| w=9 | 1 | 0.3500 | 0: 0.3500 | 0 | 0.50 | 3 |"
    )
    # runs recorded in any order are listed by seed
    assert sweep.summarise(rows[::-1]).splitlines()[3] == lines[3]


def test_tiny_margin_sweep_records_validation_map_and_kept_bits(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "sweep"
    argv = [
        "--teacher", str(teacher), "--loss", "brcd", "--grid", "brcd.margin=0.1,0.9;brcd.k=3",
        "--backbone", TINY_CNN["backbone"], "--epochs", "1", "--max-train", "100",
        "--view-bank", "2", "--out", str(out),
    ]  # fmt: skip
    assert sweep.main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in rows] == ["brcd.margin=0.1 brcd.k=3", "brcd.margin=0.9 brcd.k=3"]
    from hashkd.encoding import artifact_digest

    for r in rows:
        assert 0.0 <= r["val_map"] <= 1.0 and 0.0 <= r["kept_fraction"] <= 1.0
        assert r["brcd_k"] == 3 and r["kd_inputs"] == "codes"
        assert r["teacher_digest"] == artifact_digest(teacher) and r["code_version"]["hashkd"]
    # a higher margin keeps no more bits than a lower one
    assert rows[1]["kept_fraction"] <= rows[0]["kept_fraction"]
    assert (out / "results.md").read_text().count("| brcd.margin=") == 2
    assert sweep.main(argv) == 0  # a re-run trains nothing new
    assert len(json.loads((out / "results.json").read_text())) == 2


def test_kd_inputs_is_a_grid_axis(tmp_path):
    cfg = sweep.run_config(
        sweep.argparse.Namespace(
            teacher="t", student="s", loss="sp", data="digits", protocol=None, epochs=1,
            view_bank=2, val_every=1, max_train=None, teacher_cache=None,
        ),
        {"kd_inputs": "logits", "weight": "10"},
        0,
        tmp_path / "run",
    )  # fmt: skip
    assert cfg.kd_inputs == "logits" and cfg.weights == [10.0] and not cfg.resume
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    cfg = sweep.run_config(
        sweep.argparse.Namespace(
            teacher="t", student="s", loss="sp", data="digits", protocol=None, epochs=1,
            view_bank=2, val_every=1, max_train=None, teacher_cache=None,
        ),
        {"weight": "10"},
        0,
        tmp_path / "run",
    )  # fmt: skip
    assert cfg.resume and cfg.kd_inputs == "codes"  # an interrupted run continues


def test_a_rerun_with_another_teacher_is_refused(tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "sweep"
    out.mkdir()
    row = {"setting": "weight=1", "seed": 0, "val_map": 0.2, "val_collapsed": False,
           "kept_fraction": None, "teacher_digest": "0" * 64}  # fmt: skip
    (out / "results.json").write_text(json.dumps([row]))
    argv = ["--teacher", str(teacher), "--loss", "sp", "--grid", "weight=1,2", "--out", str(out)]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert "another teacher" in err and "000000000000" in err
    assert json.loads((out / "results.json").read_text()) == [row]  # nothing trained or lost


def test_teacher_cache_is_shared_by_the_settings_and_changes_no_result(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    argv = [
        "--teacher", str(teacher), "--loss", "brcd", "--grid", "brcd.margin=0.1,0.9",
        "--backbone", TINY_CNN["backbone"], "--epochs", "1", "--max-train", "60",
        "--view-bank", "2",
    ]  # fmt: skip
    cache = tmp_path / "teacher-cache"
    assert sweep.main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert (
        sweep.main([*argv, "--teacher-cache", str(cache), "--out", str(tmp_path / "cached")]) == 0
    )
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    cached = json.loads((tmp_path / "cached" / "results.json").read_text())
    # the second setting read what the first coded: one file for the images, one for the views
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert [r["val_map"] for r in cached] == [r["val_map"] for r in plain]
