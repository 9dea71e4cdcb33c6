"""scripts/distill_tables.py: tables rebuilt from committed results files, --check, --import."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load("distill_tables")
bench = _load("bench_distill")
BRCD = "BRCD: + bit mask (full)"


def _row(bits: int, model: str, seed: int, sym: float) -> dict:
    health = {"num_codes": 100, "distinct_codes": 90, "effective_codes": 80.0,
              "bit_balance": 0.1, "largest_bucket_fraction": 0.02, "collapsed": False}  # fmt: skip
    return {
        "bits": bits, "model": model, "seed": seed, "weights": [], "map_sym": sym,
        "map_sym_position": sym, "map_asym": None, "map_asym_position": None, "p_r2": 0.1,
        "health": health, "brcd_kept": None, "train_s": None, "wall_s": None, "params": 10**6,
        "images_per_s": 5.0,
    }  # fmt: skip


def _results(tmp_path: Path) -> Path:
    rows = [_row(16, "teacher", 0, 0.25), _row(16, BRCD, 0, 0.2), _row(16, BRCD, 1, 0.22),
            _row(64, BRCD, 0, 0.3)]  # fmt: skip
    path = tmp_path / "benchmarks" / "r.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"protocol": "digits", "topk": 100, "rows": rows}))
    return path


def test_blocks_are_rebuilt_from_their_results_file_with_filters(tmp_path):
    _results(tmp_path)
    doc = (
        "before\n<!-- distill-table: benchmarks/r.json bits=16 models=teacher|" + BRCD + " -->\n"
        "stale text\n<!-- /distill-table -->\nafter\n"
    )
    new = tables.rebuild(doc, root=tmp_path)
    assert new.startswith("before\n<!-- distill-table: ") and new.endswith(
        "<!-- /distill-table -->\nafter\n"
    )
    assert "stale text" not in new
    rows = json.loads((tmp_path / "benchmarks" / "r.json").read_text())["rows"]
    # the oracle: the bench's own table of the selected rows
    want = bench.table_lines([r for r in rows if r["bits"] == 16], "digits", 100)
    assert "\n".join(want) in new
    assert "| 64 |" not in new and "mAP@100" in new
    assert "0.2100 ± 0.0141" in new  # BRCD's two seeds: mean 0.21, sample std 0.01414
    assert tables.rebuild(new, root=tmp_path) == new  # idempotent
    with pytest.raises(ValueError, match="selects no row"):
        tables.render("benchmarks/r.json bits=32", root=tmp_path)
    with pytest.raises(ValueError, match="filter 'seeds'"):
        tables.render("benchmarks/r.json seeds=1", root=tmp_path)


def test_a_sweep_results_file_renders_the_sweep_table(tmp_path):
    runs = [{"setting": "brcd.margin=0.1", "seed": 0, "val_map": 0.3, "val_collapsed": False,
             "kept_fraction": 0.5, "brcd_k": 2}]  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(runs))
    assert tables.render("s.json", root=tmp_path).splitlines()[2] == (
        "| brcd.margin=0.1 | 1 | 0.3000 | 0: 0.3000 | 0 | 0.50 | 2 |"
    )


def test_check_and_rewrite(tmp_path, monkeypatch):
    _results(tmp_path)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    doc = tmp_path / "d.md"
    doc.write_text("<!-- distill-table: benchmarks/r.json -->\nold\n<!-- /distill-table -->\n")
    assert tables.main([str(doc), "--check"]) == 1 and "old" in doc.read_text()
    assert tables.main([str(doc)]) == 0 and "old" not in doc.read_text()
    assert tables.main([str(doc), "--check"]) == 0


def test_import_makes_machine_paths_relative(tmp_path):
    run = tmp_path / "runs_here" / "table16"
    run.mkdir(parents=True)
    teacher = str(tmp_path / "runs_here" / "teacher" / "t16")
    data = {"inputs": {"teachers": {"16": {"path": teacher, "model_digest": "ab"}},
                       "student_weights": {"path": "/elsewhere/w.safetensors", "sha256": "cd"}},
            "rows": [], "protocol": "p"}  # fmt: skip
    (run / "results.json").write_text(json.dumps(data))
    dest = tmp_path / "repo" / "benchmarks" / "t16.json"
    assert tables.main(["--import", str(run / "results.json"), str(dest)]) == 0
    got = json.loads(dest.read_text())
    assert got["inputs"]["teachers"]["16"] == {"path": "runs/teacher/t16", "model_digest": "ab"}
    assert got["inputs"]["student_weights"] == {"path": "w.safetensors", "sha256": "cd"}


def test_the_repository_docs_match_their_results_files():
    assert tables.main(["--check"]) == 0


def _part(seed: int, **settings) -> dict:
    row = {
        "bits": 64,
        "model": "BRCD: + bit mask (full)",
        "seed": seed,
        "code_version": {"c": seed},
    }
    return {"protocol": "p", "epochs": 12, "inputs": {"t": "x"}, "seeds": [seed],
            "code_version": {"c": seed}, "rows": [row], **settings}  # fmt: skip


def test_import_merges_the_seeds_of_one_table_run_apart(tmp_path, capsys):
    runs = tmp_path / "runs_here"
    paths = []
    for seed in (2, 0):
        (runs / f"s{seed}").mkdir(parents=True)
        paths.append(runs / f"s{seed}" / "results.json")
        paths[-1].write_text(json.dumps(_part(seed)))
    dest = tmp_path / "merged.json"
    assert tables.main(["--import", *map(str, paths), str(dest)]) == 0
    got = json.loads(dest.read_text())
    assert got["seeds"] == [0, 2] and [r["seed"] for r in got["rows"]] == [2, 0]
    assert [r["code_version"] for r in got["rows"]] == [{"c": 2}, {"c": 0}]  # each its own
    # other settings, a repeated row, or a sweep beside a table: refused, nothing written
    paths[1].write_text(json.dumps(_part(0, epochs=6)))
    for bad, needle in (
        (_part(0, epochs=6), "differ in epochs"),
        (_part(2), "comes in more than one results file"),
        ([{"setting": "w=1", "seed": 0}], "cannot be merged"),
    ):
        paths[1].write_text(json.dumps(bad))
        with pytest.raises(SystemExit):
            tables.main(["--import", *map(str, paths), str(tmp_path / "no.json")])
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()
    # one process per row, each with its own losses' weights and options: the teacher row both
    # measured is kept once (unless the copies disagree), the per-loss settings are the union
    teacher = {"bits": 64, "model": "teacher", "seed": 0, "map_sym": 0.27, "p_r2": 0.01}
    brcd = {"loss_weights": {"brcd": 10.0}, "loss_options": {"brcd": {"k": 10}}}
    lsh = {"loss_weights": {"lsh": 0.3}, "loss_options": {}}

    def write(settings: tuple[dict, dict], teacher_sym: float = 0.27) -> None:
        for path, model, extra in zip(
            paths, ("BRCD: + bit mask (full)", "lsh on logits"), settings, strict=True
        ):
            part = _part(0, **extra)
            part["rows"] = [{**teacher, "map_sym": teacher_sym if model == "lsh on logits"
                             else 0.27}, {**part["rows"][0], "model": model}]  # fmt: skip
            path.write_text(json.dumps(part))

    write((brcd, lsh))
    assert tables.main(["--import", *map(str, paths), str(dest)]) == 0
    got = json.loads(dest.read_text())
    assert [(r["model"], r["seed"]) for r in got["rows"]] == [
        ("teacher", 0), ("BRCD: + bit mask (full)", 0), ("lsh on logits", 0)
    ]  # fmt: skip
    assert got["loss_weights"] == {"brcd": 10.0, "lsh": 0.3}
    assert got["loss_options"] == {"brcd": {"k": 10}}
    for settings, teacher_sym, needle in (
        ((brcd, lsh), 0.28, "teacher row of seed 0 differs"),
        ((brcd, {**lsh, "loss_weights": {"lsh": 0.3, "brcd": 5.0}}), 0.27, "differently"),
        (({"loss_weights": {}, "loss_options": {}}, lsh | {"loss_weights": {"brcd": 10.0,
          "lsh": 0.3}}), 0.27, "ran brcd at its default loss_weights"),
    ):  # fmt: skip
        write(settings, teacher_sym)
        with pytest.raises(SystemExit):
            tables.main(["--import", *map(str, paths), str(tmp_path / "no.json")])
        assert needle in capsys.readouterr().err
    sweep = [{"setting": "w=1", "seed": 0, "teacher_digest": "a"}]
    paths[0].write_text(json.dumps(sweep))
    paths[1].write_text(json.dumps([{**sweep[0], "seed": 1}]))
    assert tables.main(["--import", *map(str, paths), str(dest)]) == 0
    assert [r["seed"] for r in json.loads(dest.read_text())] == [0, 1]
    paths[1].write_text(json.dumps([{**sweep[0], "seed": 1, "teacher_digest": "b"}]))
    with pytest.raises(SystemExit):
        tables.main(["--import", *map(str, paths), str(dest)])
    assert "different teachers" in capsys.readouterr().err
