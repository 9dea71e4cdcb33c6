"""scripts/bench_distill.py: a tiny grid over two seeds in worker processes, resume, the table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashkd.losses.registry import get_loss_class
from tests.conftest import TINY_CNN, save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_distill", ROOT / "scripts" / "bench_distill.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

BRCD = "BRCD: + bit mask (full)"
NO_KD = "no KD (CIBHash only)"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_grid_with_two_seeds_two_jobs_then_resume(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "grid"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_distill.py"),
        "--teacher",
        f"16={teacher}",
        "--data",
        "digits",
        "--student",  # the previous release's names still run (hashkd/cli/vocabulary.py)
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
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--variants",
        f"{NO_KD},{BRCD}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=1500)
    for old, new in (("--student", "--backbone"), ("--topk", "--k")):
        assert f"{old} is deprecated and goes in the next release: use {new}" in proc.stderr
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert result["seeds"] == [0, 1]
    assert sorted((r["model"], r["seed"]) for r in rows) == [
        (BRCD, 0),
        (BRCD, 1),
        ("no KD (CIBHash only)", 0),
        ("no KD (CIBHash only)", 1),
        ("teacher", 0),
        ("teacher", 1),
    ]
    for r in rows:
        assert r["bits"] == 16 and r["params"] > 0
        for key in ("map_sym", "map_sym_position", "p_r2"):
            assert 0.0 <= r[key] <= 1.0
        student = r["model"] != "teacher"
        assert (r["map_asym"] is not None) == student == (r["map_asym_position"] is not None)
        assert (r["train_s"] is not None) == student == (r["wall_s"] is not None)
        if student:
            assert r["wall_s"] >= r["train_s"] > 0
        assert r["health"]["num_codes"] > 0 and r["health"]["distinct_codes"] >= 1
        assert 0.0 <= r["health"]["bit_balance"] <= 0.5
        expected_weights = [get_loss_class("brcd").default_weight] if r["model"] == BRCD else []
        assert r["weights"] == expected_weights
        assert (r["brcd_kept"] is not None) == (r["model"] == BRCD)
        assert r["brcd_kept"] is None or 0.0 < r["brcd_kept"] <= 1.0
    # the seeds draw different splits and students
    by_seed = {r["seed"]: r for r in rows if r["model"] == BRCD}
    assert by_seed[0]["map_sym"] != by_seed[1]["map_sym"]

    table = (out / "results.md").read_text().splitlines()
    header = _cells(next(line for line in table if line.startswith("| bits |")))
    body = [
        dict(zip(header, _cells(line), strict=True)) for line in table if line.startswith("| 16 |")
    ]
    assert [b["model"] for b in body] == ["teacher", NO_KD, BRCD]
    for b in body:
        group = [r for r in rows if r["model"] == b["model"]]
        assert b["n"] == "2"
        sym = [r["map_sym"] for r in group]
        assert b["mAP sym"] == f"{np.mean(sym):.4f} ± {np.std(sym, ddof=1):.4f}"
        pos = [r["map_sym_position"] for r in group]
        assert b["mAP sym (pos)"] == f"{np.mean(pos):.4f} ± {np.std(pos, ddof=1):.4f}"
        # the health cells are one seed's, the named one, and no other seed has fewer
        # effective codes unless the named one collapsed
        named = int(b["distinct codes"].split("(seed ")[1].split(")")[0])
        (worst,) = [r["health"] for r in group if r["seed"] == named]
        assert b["distinct codes"].split()[0] == str(worst["distinct_codes"])
        assert b["largest bucket"] == f"{worst['largest_bucket_fraction']:.3f}"
        if not worst["collapsed"]:
            assert all(r["health"]["effective_codes"] >= worst["effective_codes"] for r in group)
    assert body[0]["weight"] == body[1]["weight"] == "-" and body[0]["mAP asym"] == "-"
    assert body[2]["weight"] == f"{get_loss_class('brcd').default_weight:g}"
    assert body[0]["kept bits"] == body[1]["kept bits"] == "-"
    assert body[0]["BRCD"] == body[1]["BRCD"] == "-"
    ks = sorted({r["brcd"]["k"] for r in rows if r["model"] == BRCD})
    assert body[2]["BRCD"] == f"k={'/'.join(map(str, ks))}, anchor, m=0.5"
    # provenance: what the inputs were, the settings, the code version
    from hashkd.encoding import artifact_digest

    assert result["topk"] == 100 and result["val_every"] == 1  # epochs // 2, at least 1
    rec = result["inputs"]["teachers"]["16"]
    assert rec["model_digest"] == artifact_digest(teacher) and rec["path"] == str(teacher)
    import hashlib

    sha = hashlib.sha256((teacher / "model.safetensors").read_bytes()).hexdigest()
    assert rec["weights_sha256"] == sha and result["inputs"]["student_weights"] is None
    assert result["code_version"]["hashkd"] and "git_commit" in result["code_version"]
    for r in rows:
        assert r["code_version"] == result["code_version"]
        if r["model"] != "teacher":
            assert r["teacher_digest"] == rec["model_digest"] and r["kd_inputs"] == "codes"
    assert body[0]["wall s"] == "-" and body[1]["wall s"] != "-"

    # Same --out again: every row is done, nothing is retrained.
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=1500)
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert '"model"' not in done.stdout  # no new row printed

    bad = subprocess.run(
        [*cmd[:-2], "--jobs", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "--jobs 0" in bad.stderr
    bad = subprocess.run(
        [*cmd, "--seeds", "1,x"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "--seeds '1,x' is not valid" in bad.stderr


def _row(
    model: str, seed: int, sym: float, collapsed: bool = False, kept=None, effective=80.0, k=None
) -> dict:
    health = {
        "num_codes": 100,
        "distinct_codes": 1 if collapsed else 90,
        "effective_codes": 1.0 if collapsed else effective,
        "bit_balance": 0.5 if collapsed else 0.1,
        "largest_bucket_fraction": 1.0 if collapsed else round(1 / effective, 3),
        "collapsed": collapsed,
    }
    brcd = {"k": k, "mask_mode": "anchor", "margin": 0.5} if k else None
    return {
        "bits": 16, "model": model, "seed": seed, "weights": [1.0], "map_sym": sym,
        "map_sym_position": sym + 0.01, "map_asym": sym, "map_asym_position": sym,
        "p_r2": 0.1, "health": health, "brcd_kept": kept, "brcd": brcd, "train_s": 10.0,
        "wall_s": 12.0, "params": 1000, "images_per_s": 5.0,
    }  # fmt: skip


def test_table_marks_collapse_and_shows_kept_bits(tmp_path):
    rows = [
        _row(NO_KD, 0, 0.20, collapsed=True),
        _row(NO_KD, 1, 0.10),
        _row(BRCD, 0, 0.30, kept=0.5, k=2),
        _row(BRCD, 1, 0.32, kept=0.75, effective=20.0, k=2),  # the least diverse seed
        _row(BRCD, 2, 0.34, kept=1.0, k=3),
    ]
    path = tmp_path / "t.md"
    bench.write_markdown(rows, path, "digits", 100)
    text = path.read_text()
    lines = text.splitlines()
    header = _cells(next(line for line in lines if line.startswith("| bits |")))
    body = {
        b["model"]: b
        for b in (dict(zip(header, _cells(x), strict=True)) for x in lines if x.startswith("| 16"))
    }
    assert body[BRCD]["n"] == "3" and body[BRCD]["mAP sym"] == "0.3200 ± 0.0200"
    assert body[BRCD]["kept bits"] == "0.75 ± 0.25"  # hand-worked: mean 0.75, sample std 0.25
    # the worst seed's health, not the mean: the collapsed seed 0 of no KD (1 code, not 46),
    # and BRCD's seed 1 with 20 effective codes (largest bucket 1/20)
    assert body[NO_KD]["distinct codes"] == "1 (seed 0) ⚠" and body[NO_KD]["bit balance"] == "0.500"
    assert body[NO_KD]["largest bucket"] == "1.000"
    assert body[BRCD]["distinct codes"] == "90 (seed 1)"
    assert body[BRCD]["largest bucket"] == "0.050"
    assert body[BRCD]["BRCD"] == "k=2/3, anchor, m=0.5" and body[NO_KD]["BRCD"] == "-"
    assert "16 bits, no KD (CIBHash only): codes collapsed in seed(s) 0" in text
    assert "BRCD: + bit mask (full): codes collapsed" not in text


BRCD_ROW = {"loss": "brcd", "weight": 1.0, "report": {"mean_kept_fraction": 0.4375}}


@pytest.mark.parametrize(
    ("meta", "weights", "kept"),
    [
        ({}, [], None),
        ({"losses": [{"loss": "sp", "weight": 3000.0, "source": "default"}]}, [3000.0], None),
        ({"losses": [BRCD_ROW]}, [1.0], 0.4375),
        ({"losses": [{"loss": "brcd", "weight": 2.0, "report": {}}]}, [2.0], None),
        # the mask off (cluster filtering only): the bits the run trained with, not the rule's
        (
            {
                "losses": [
                    {
                        **BRCD_ROW,
                        "report": {"mean_kept_fraction": 0.4, "applied_mean_kept_fraction": 1.0},
                    }
                ]
            },
            [1.0],
            1.0,
        ),
    ],
)
def test_weights_and_kept_fraction_come_from_the_recorded_losses(meta, weights, kept):
    from hashkd.losses.run_report import brcd_kept_fraction, recorded_weights

    assert recorded_weights(meta) == weights
    assert brcd_kept_fraction(meta) == kept


def _epoch_events(student: Path) -> list[int]:
    events = [json.loads(line) for line in (student / "train_log.jsonl").read_text().splitlines()]
    return [e["epoch"] for e in events if "epoch" in e and "loss" in e]


def test_pooled_cosine_row_then_resume_of_an_interrupted_student(tmp_path):
    """--pool and --lr-schedule reach the student; a student whose row was not recorded resumes."""
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "pooled"
    argv = [
        "--teacher", f"16={teacher}", "--data", "digits", "--backbone", TINY_CNN["backbone"],
        "--epochs", "2", "--view-bank", "2", "--k", "100", "--speed-seconds", "0.1",
        "--threads", "1", "--pool", "all", "--lr-schedule", "cosine", "--warmup-epochs", "0.5",
        "--val-every", "2", "--variants", BRCD, "--loss-opt", "brcd.margin=0.2", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert (result["pool"], result["lr_schedule"], result["warmup_epochs"]) == (
        "all",
        "cosine",
        0.5,
    )
    student = bench.student_dir(out, 16, BRCD, 0)
    config = json.loads((student / "config.json").read_text())
    pool = config["meta"]["pool"]
    # digits: 1,797 images; the pool is every one of them but the validation images and queries
    assert pool["spec"] == "all" and pool["candidates"] == 1797
    assert pool["size"] == 1797 - pool["excluded_val_query"] and pool["excluded_val_query"] > 0
    run = json.loads((student / "run.json").read_text())
    assert run["config"]["lr_schedule"] == "cosine" and run["config"]["pool"] == "all"
    (brcd_report,) = [r["report"] for r in config["meta"]["losses"] if r["loss"] == "brcd"]
    assert brcd_report["margin"] == 0.2 and result["loss_options"] == {"brcd": {"margin": 0.2}}
    assert _epoch_events(student) == [1, 2]

    # Interrupted before its row was recorded: the re-run resumes the finished checkpoint
    # (no epoch is trained again) and records the row with the same codes' figures.
    first = result["rows"]
    kept = [r for r in first if r["model"] != BRCD]
    (out / "results.json").write_text(json.dumps({**result, "rows": kept}))
    assert bench.main(argv) == 0
    again = json.loads((out / "results.json").read_text())["rows"]
    assert _epoch_events(student) == [1, 2]
    (old,) = [r for r in first if r["model"] == BRCD]
    (new,) = [r for r in again if r["model"] == BRCD]
    assert (new["map_sym"], new["map_asym"]) == (old["map_sym"], old["map_asym"])


def test_loss_opt_reaches_only_the_rows_of_its_loss():
    extra = {"brcd": {"margin": 0.2}}
    assert bench.row_losses(BRCD, extra) == (["brcd"], {"brcd": {"margin": 0.2}})
    alone_losses, alone = bench.row_losses("BRCD: contrastive KD alone", extra)
    assert alone["brcd"] == {**bench.BRCD_OFF, "margin": 0.2}
    assert bench.row_losses("crd", extra) == (["crd"], {})
    assert bench.row_losses(NO_KD, extra) == ([], {})
    assert bench.VARIANTS[BRCD][1] == {"brcd": {}}  # the row table is not changed in place


@pytest.mark.parametrize(
    "flag, message",
    [
        ("crd.tau=0.1", "crd"),  # a loss none of the chosen rows uses
        ("margin=0.2", "margin=0.2"),  # no LOSS. prefix
    ],
)
def test_a_bad_loss_opt_is_refused_naming_it(tmp_path, capsys, flag, message):
    argv = [
        "--teacher",
        f"16={tmp_path}",
        "--variants",
        BRCD,
        "--loss-opt",
        flag,
        "--out",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_bench_decodes_image_files_without_progress_bars(monkeypatch):
    """The grid's logs hold one line per row: no decode bars, in the parent or in a worker."""
    from hashkd.data.cache import current_options

    seen = []
    monkeypatch.setattr(bench, "_main", lambda argv: seen.append(current_options().progress) or 0)
    monkeypatch.setattr(bench, "_train_row", lambda *a: seen.append(current_options().progress))
    assert current_options().progress  # the library default
    assert bench.main([]) == 0
    bench.train_row(None, 16, "", BRCD, 0, None, None)
    assert seen == [False, False] and current_options().progress


def test_students_start_from_pretrain_weights(tmp_path):
    """--student-weights reaches the students: the run records it, and after one short epoch
    the student's first conv is still far closer to the pretrained tensor than a fresh init is."""
    import torch

    from hashkd.models import build_model, load_artifact
    from hashkd.models.hash_model import ModelConfig
    from tests.test_distill import _pretrained_backbone

    weights, state = _pretrained_backbone(tmp_path / "ssl")
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "pre"
    argv = [
        "--teacher", f"16={teacher}", "--data", "digits", "--backbone", TINY_CNN["backbone"],
        "--epochs", "1", "--max-train", "50", "--view-bank", "2", "--k", "100",
        "--speed-seconds", "0.1", "--threads", "1", "--variants", NO_KD,
        "--pretrain-weights", str(weights), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["student_weights"] == str(weights)
    student_path = bench.student_dir(out, 16, NO_KD, 0)
    run = json.loads((student_path / "run.json").read_text())
    assert run["config"]["student_weights"] == str(weights)
    # one epoch of Adam moves the weights a little: far closer to the pretrained tensors than a
    # fresh random init is (the oracle: the same architecture built with another seed)
    trained = load_artifact(student_path).backbone.state_dict()
    key = next(k for k, v in state.items() if v.ndim == 4)
    torch.manual_seed(123)
    fresh = build_model(ModelConfig(bits=16, img_size=16, **TINY_CNN)).backbone.state_dict()
    assert (trained[key] - state[key]).norm() < 0.5 * (fresh[key] - state[key]).norm()


def _stored(out: Path, **settings) -> None:
    row = {"bits": 16, "model": BRCD, "seed": 0, "map_sym": 0.2, "map_sym_position": 0.2}
    row["health"] = {}
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"protocol": "digits", **settings, "rows": [row]}))


@pytest.mark.parametrize(
    "stored, flags, named",
    [
        ({"epochs": 1}, ["--epochs", "2"], "epochs: 1 -> 2"),
        ({"pool": None}, ["--pool", "all"], "pool: None -> 'all'"),
        # an older results.json recorded no loss options: its rows ran with none
        ({}, ["--loss-opt", "brcd.margin=0.2"], "loss_options: {} -> {'brcd': {'margin': 0.2}}"),
        ({"student_weights": "a.safetensors"}, [], "student_weights: 'a.safetensors' -> None"),
        # an older results.json recorded no loss weights: its rows ran with the defaults
        ({}, ["--loss-weight", "brcd=2"], "loss_weights: {} -> {'brcd': 2.0}"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_before_mixing_rows(
    tmp_path, capsys, stored, flags, named
):
    out = tmp_path / "grid"
    _stored(out, **stored)
    before = (out / "results.json").read_text()
    argv = ["--teacher", f"16={tmp_path}", "--data", "digits", "--epochs", "1"]
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--variants", BRCD, *flags, "--out", str(out)])
    assert exc.value.code == 2 and named in capsys.readouterr().err
    assert (out / "results.json").read_text() == before  # nothing lost or rewritten


def test_settings_an_older_file_lacks_are_compared_with_their_old_value():
    now = {"epochs": 5, "data": "cifar10", "loss_options": {}, "student_weights": None}
    assert bench.settings_mismatch({"epochs": 5}, now) == []  # data: not recorded then, unknown
    assert bench.settings_mismatch({"epochs": 5}, {**now, "student_weights": "w"}) == [
        "student_weights: None -> 'w'"
    ]


def test_a_rerun_on_another_teacher_at_the_same_path_is_refused(tmp_path, capsys):
    """results.json records the teacher's digest: another teacher at the same path is refused
    before any row is trained; the same teacher moved to another path is not a new input."""
    from hashkd.training.provenance import input_record

    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "grid"
    _stored(out, epochs=1, inputs=input_record({16: str(teacher)}, None))
    argv = ["--teacher", f"16={teacher}", "--data", "digits", "--epochs", "1", "--topk", "1000"]
    import shutil

    import torch

    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(1)  # another teacher, same architecture, same path
    shutil.rmtree(teacher)
    save_artifact(build_model(ModelConfig(bits=16, img_size=16, **TINY_CNN)), teacher)
    before = (out / "results.json").read_text()
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--variants", BRCD, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "other inputs" in err and "16-bit teacher: digest" in err
    assert (out / "results.json").read_text() == before


def test_inputs_compare_by_content_not_path(tmp_path):
    from hashkd.training.provenance import input_mismatch, input_record

    teacher = save_tiny_teacher(tmp_path / "a")
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights one")
    stored = input_record({16: str(teacher)}, w)
    import shutil

    moved = shutil.copytree(teacher, tmp_path / "b")
    assert input_mismatch(stored, input_record({16: str(moved)}, w)) == []
    assert input_mismatch(stored, input_record({32: str(moved)}, w)) == []  # another length
    w.write_bytes(b"weights two")
    (msg,) = input_mismatch(stored, input_record({16: str(moved)}, w))
    assert msg.startswith("student weights: ")
    assert input_mismatch(stored, input_record({16: str(moved)}, None)) == [
        f"student weights: {stored['student_weights']['sha256'][:12]} -> none"
    ]


def test_logits_rows_distil_the_continuous_outputs(tmp_path):
    assert bench.row_kd_inputs("sp on logits") == "logits" and bench.row_kd_inputs("sp") == "codes"
    assert bench.VARIANTS["crd on logits"] == bench.VARIANTS["crd"]
    align = "align (same-view code alignment)"
    assert (
        bench.row_kd_inputs(f"{align} on logits") == "logits"
        and bench.row_kd_inputs(align) == "codes"
    )
    assert "BRCD: + cluster filtering on logits" not in bench.VARIANTS  # ablations: codes only
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "logits"
    argv = [
        "--teacher", f"16={teacher}", "--data", "digits", "--student", TINY_CNN["backbone"],
        "--epochs", "1", "--max-train", "50", "--view-bank", "2", "--topk", "100",
        "--speed-seconds", "0.1", "--threads", "1", "--variants", "sp on logits",
        "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    (row,) = [r for r in json.loads((out / "results.json").read_text())["rows"] if r["seed"] == 0
              and r["model"] != "teacher"]  # fmt: skip
    assert row["model"] == "sp on logits" and row["kd_inputs"] == "logits"
    run = json.loads((bench.student_dir(out, 16, "sp on logits", 0) / "run.json").read_text())
    assert run["config"]["kd_inputs"] == "logits"


def test_comparison_leaves_collapsed_baselines_out_and_judges_the_spread():
    rows = [
        _row(BRCD, 0, 0.30), _row(BRCD, 1, 0.32), _row(BRCD, 2, 0.34),  # 0.32 ± 0.02
        _row("crd", 0, 0.20), _row("crd", 1, 0.22), _row("crd", 2, 0.24),  # 0.22 ± 0.02
        _row("sp", 0, 0.31), _row("sp", 1, 0.33), _row("sp", 2, 0.35),  # 0.33 ± 0.02
        _row("rkd", 0, 0.90, collapsed=True), _row("rkd", 1, 0.90),
        _row("lsh", 0, 0.40),
        _row("compress", 1, 0.25), _row("compress", 2, 0.27),
        _row("lsh on logits", 7, 0.10),
        _row(NO_KD, 0, 0.99),  # not a baseline
    ]  # fmt: skip
    sym, asym = bench.comparison_lines(rows)
    # hand-worked, in the table's row order, each on the seeds both rows have: sp -1 pt within
    # 0.02 + 0.02; compress on seeds 1, 2: 0.33 vs 0.26, +7 pt beyond 0.0141 + 0.0141; lsh on
    # seed 0: 0.30 vs 0.40; crd +10 pt beyond 0.04; lsh on logits shares no seed
    assert sym == (
        f"- 16 bits, symmetric: {BRCD} vs sp -1.00 pt (within the spread); "
        "compress +7.00 pt (seeds 1, 2: above beyond the spread); "
        "lsh -10.00 pt (seed 0: one seed: spread unknown); crd +10.00 pt (above beyond the spread); "
        "lsh on logits (no seed in common). "
        "Left out (collapsed in some seed): rkd."
    )
    assert asym.startswith("- 16 bits, asymmetric: ")
    assert bench.comparison_lines([_row(BRCD, 0, 0.3)]) == []  # no baseline, no claim


def test_teacher_share_is_per_seed_against_the_same_splits_teacher():
    rows = [
        _row("teacher", 0, 0.20), _row("teacher", 1, 0.25), _row("teacher", 2, 0.40),
        _row(BRCD, 0, 0.19), _row(BRCD, 1, 0.24), _row(BRCD, 2, 0.36),
        _row("sp", 0, 0.10),  # not the claimed model
    ]  # fmt: skip
    for r in rows:
        if r["model"] == "teacher":
            r["map_asym"] = None  # the teacher has no asymmetric protocol
    (line,) = bench.teacher_share_lines(rows)
    # hand-worked: 95%, 96%, 90% -> mean 93.667, sample std 3.215, mean - std 90.452; the
    # student's asymmetric mAP equals its symmetric one here, so against the teacher less a
    # point: 0.19 - 0.19, 0.24 - 0.24, 0.36 - 0.39 -> 0, 0, -3 pt -> -1.00 ± 1.73
    assert line == (
        "- 16 bits: symmetric mAP at 93.7% ± 3.2% of the teacher's (mean - std 90.5%; "
        "seed 0 95.0%, seed 1 96.0%, seed 2 90.0%); asymmetric mAP -1.00 ± 1.73 pt against "
        "the teacher's symmetric mAP minus 1 point."
    )
    # a seed without its teacher row: no claim; one seed: its spread is unknown
    assert (
        bench.teacher_share_lines([r for r in rows if r["seed"] != 2 or r["model"] != "teacher"])
        == []
    )
    (one,) = bench.teacher_share_lines([rows[0], rows[3]])
    assert "95.0% of the teacher's (seed 0 95.0%; one seed: spread unknown)" in one
    assert "+0.00 pt" in one
    table = "\n".join(bench.table_lines(rows, "p", 100))
    assert "against the teacher of the same seed's splits" in table
    # a baseline is held to the same goals, named; hand-worked: sp seed 0 0.10 / 0.20 = 50%
    (sp_line,) = bench.teacher_share_lines(rows, "sp", named=True)
    assert sp_line.startswith("- 16 bits, sp: symmetric mAP at 50.0% of the teacher's (seed 0")
    assert f"The baselines against the same goals:\n{sp_line}" in table


def test_variants_teacher_measures_the_teacher_rows_alone(tmp_path):
    """``--variants teacher``: one teacher row per seed and no student trained; a later run
    with a student row in the same ``--out`` keeps those rows instead of measuring them again."""
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "teacher_rows"
    argv = [
        "--teacher", f"16={teacher}", "--data", "digits", "--backbone", TINY_CNN["backbone"],
        "--epochs", "1", "--max-train", "50", "--view-bank", "2", "--k", "100",
        "--speed-seconds", "0.1", "--threads", "1", "--seeds", "0,1", "--out", str(out),
    ]  # fmt: skip
    assert bench.main([*argv, "--variants", "teacher"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["model"], r["seed"]) for r in rows) == [("teacher", 0), ("teacher", 1)]
    assert not bench.student_dir(out, 16, NO_KD, 0).exists()
    assert rows[0]["map_sym"] != rows[1]["map_sym"]  # each seed draws its own splits

    assert bench.main([*argv, "--variants", NO_KD]) == 0
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [r for r in again if r["model"] == "teacher"] == rows
    assert sorted(r["seed"] for r in again if r["model"] == NO_KD) == [0, 1]


def test_loss_weight_sets_the_weight_of_its_loss_in_every_row_that_uses_it(tmp_path, capsys):
    from hashkd.losses.registry import get_loss_class

    chosen = bench.parse_loss_weights(["sp=300", "crd=2.5"])
    assert chosen == {"sp": 300.0, "crd": 2.5}
    assert bench.row_weights(["sp"], chosen) == [300.0]
    assert bench.row_weights(["brcd"], chosen) is None  # no weight of its own: the defaults
    assert bench.row_weights(["brcd", "crd"], chosen) == [
        get_loss_class("brcd").default_weight,
        2.5,
    ]
    for bad in ("sp", "sp=0", "sp=x", "nope=1"):
        with pytest.raises(ValueError, match="--loss-weight"):
            bench.parse_loss_weights([bad])
    # a real row: the student trained with the chosen weight, and results.json says so
    teacher = save_tiny_teacher(tmp_path / "teacher")
    out = tmp_path / "weighted"
    argv = [
        "--teacher", f"16={teacher}", "--data", "digits", "--student", TINY_CNN["backbone"],
        "--epochs", "1", "--max-train", "50", "--view-bank", "2", "--topk", "100",
        "--speed-seconds", "0.1", "--threads", "1", "--variants", "sp,sp on logits",
        "--loss-weight", "sp=7", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["loss_weights"] == {"sp": 7.0}
    students = [r for r in result["rows"] if r["model"] != "teacher"]
    assert sorted(r["model"] for r in students) == ["sp", "sp on logits"]
    assert all(r["weights"] == [7.0] for r in students)
    for name in ("sp", "sp on logits"):
        run = json.loads((bench.student_dir(out, 16, name, 0) / "run.json").read_text())
        assert run["config"]["weights"] == [7.0]
    # a weight for a loss no chosen row uses is refused before anything runs
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv[:-2], "--loss-weight", "crd=1", "--out", str(tmp_path / "o2")])
    assert exc.value.code == 2 and "--loss-weight names crd" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_brcd_on_logits_is_judged_like_brcd_and_never_counts_as_a_baseline():
    twin = BRCD + bench.LOGITS_SUFFIX
    assert bench.row_kd_inputs(twin) == "logits" and bench.VARIANTS[twin] == bench.VARIANTS[BRCD]
    assert twin not in bench.BASELINES and BRCD not in bench.BASELINES
    rows = [
        _row("teacher", 0, 0.40), _row("teacher", 1, 0.40),
        _row(BRCD, 0, 0.36), _row(BRCD, 1, 0.38),
        _row(twin, 0, 0.30), _row(twin, 1, 0.32),
        _row("lsh on logits", 0, 0.33), _row("lsh on logits", 1, 0.35),
    ]  # fmt: skip
    for r in rows:
        if r["model"] == "teacher":
            r["map_asym"] = None
    text = "\n".join(bench.table_lines(rows, "p", 100))
    # hand-worked: BRCD 0.37 vs lsh 0.34 (+3 pt, spread 0.0141 + 0.0141); the twin 0.31 (-3 pt)
    assert f"{BRCD} vs lsh on logits +3.00 pt (above beyond the spread)" in text
    assert f"{twin} vs lsh on logits -3.00 pt (BELOW beyond the spread)" in text
    assert "BRCD (full) on logits against the teacher of the same seed's splits:" in text
    assert "77.5% ± 3.5% of the teacher's" in text  # the twin: 75% and 80%
    assert f"{twin} vs {twin}" not in text and f"{BRCD} vs {twin}" not in text
