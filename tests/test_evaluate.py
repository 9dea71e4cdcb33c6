"""hashkd.evaluation, its command line (``hashkd evaluate`` / scripts/evaluate_map.py) and
hashkd.encoding.encode_dataset."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hashkd.cli import main
from hashkd.codes import CodeSet, pack_codes
from hashkd.evaluation import (
    EvaluationInputs,
    evaluate,
    evaluate_code_sets,
    markdown_table,
    retrieval_protocol,
)
from hashkd.metrics import code_health, evaluate_codes
from tests.conftest import TINY_VIT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_map.py"


def script_main(argv: list[str]) -> int:
    """Run scripts/evaluate_map.py as a program; its exit code."""
    old = sys.argv
    sys.argv = [str(SCRIPT), *argv]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old
    raise AssertionError("the script did not exit")


def _codeset(rng, n, bits, classes=4, model="teacher-A", labels=True) -> CodeSet:
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    y = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, n)] if labels else None
    meta = {"model": f"/models/{model}", "model_digest": f"digest-{model}"} if model else {}
    return CodeSet(codes=codes, ids=np.arange(n), labels=y, meta=meta)


@pytest.fixture
def code_dirs(tmp_path, rng):
    q = _codeset(rng, 30, 16).save(tmp_path / "q")
    d = _codeset(rng, 200, 16).save(tmp_path / "d")
    return q, d


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("hashkd: error: ") and "Traceback" not in err[0]
    return err[0]


# ----------------------------------------------------------------------------- code sets


def test_json_equals_function_output_and_files_are_written(tmp_path, code_dirs, capsys):
    q, d = code_dirs
    out, md, plots = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "plots"
    rc = main(
        [
            "evaluate",
            "--query",
            str(q),
            "--database",
            str(d),
            "--k",
            "50",
            "--radius",
            "1",
            "--json-out",
            str(out),
            "--markdown",
            str(md),
            "--plots",
            str(plots),
            "--pn",
            "1,10,100",
        ]
    )
    assert rc == 0
    got = json.loads(out.read_text())
    qs, ds = CodeSet.load(q), CodeSet.load(d)
    want = evaluate_codes(
        qs.codes, ds.codes, qs.labels, ds.labels, topk=50, radius=1, pn_points=[1, 10, 100]
    )
    for key, value in want.items():
        assert (
            got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value
        ), key
    for key in (
        "map",
        "topk",
        "precision_at_radius",
        "radius",
        "bits",
        "num_queries",
        "num_database",
        "protocol",
    ):
        assert key in got
    assert (got["bits"], got["num_queries"], got["num_database"], got["topk"]) == (16, 30, 200, 50)
    assert got["protocol"] == "symmetric" and got["protocol_source"] == "meta"
    table = capsys.readouterr().out
    assert table == md.read_text()
    row = table.strip().splitlines()[-1]
    assert row.startswith("| symmetric | 16 | 30 | 200 | ") and f"{want['map']:.4f}" in row
    assert "mAP@50" in table and "P@r<=1" in table
    for name in ("pr_curve.png", "precision_at_n.png"):
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC


def test_protocol_from_meta_and_override(tmp_path, rng, capsys):
    q = _codeset(rng, 10, 16, model="student").save(tmp_path / "q")
    d = _codeset(rng, 40, 16, model="teacher").save(tmp_path / "d")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--query", str(q), "--database", str(d), "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "asymmetric"
    assert (
        main(
            [
                "evaluate",
                "--query",
                str(q),
                "--database",
                str(d),
                "--json-out",
                str(out),
                "--retrieval-protocol",
                "symmetric",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert (got["protocol"], got["protocol_source"]) == ("symmetric", "override")


def test_retrieval_protocol_rules():
    assert retrieval_protocol(
        {"model_digest": "a", "model": "/x"}, {"model_digest": "a", "model": "/y"}
    ) == ("symmetric", "meta")  # same weights in two folders
    assert retrieval_protocol({"model_digest": "a"}, {"model_digest": "b"}) == (
        "asymmetric",
        "meta",
    )
    assert retrieval_protocol({"model": "/x"}, {"model": "/y"}) == ("asymmetric", "meta")
    assert retrieval_protocol({}, {"model": "/y"}) == ("symmetric", "assumed")


def test_script_is_the_same_program(tmp_path, code_dirs, capsys):
    q, d = code_dirs
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", "--query", str(q), "--database", str(d), "--json-out", str(a)]) == 0
    assert script_main(["--query", str(q), "--database", str(d), "--json-out", str(b)]) == 0
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert script_main(["--query", str(q), "--database", str(tmp_path / "nope")]) == 2
    assert "nope" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--k", "0"], "--k 0"),
        (["--k", "-5"], "--k -5"),
        (["--radius", "-1"], "--radius -1"),
        (["--pn", "0,10"], "--pn '0,10'"),
    ],
)
def test_bad_values_exit_with_one_line(code_dirs, capsys, extra, needle):
    q, d = code_dirs
    assert main(["evaluate", "--query", str(q), "--database", str(d), *extra]) == 2
    assert needle in _one_error_line(capsys)


def test_bad_inputs_exit_with_one_line(tmp_path, rng, code_dirs, capsys):
    q, d = code_dirs
    assert main(["evaluate", "--query", str(q), "--database", str(tmp_path / "missing")]) == 2
    assert "missing" in _one_error_line(capsys)
    nolab = _codeset(rng, 20, 16, labels=False).save(tmp_path / "nolab")
    assert main(["evaluate", "--query", str(q), "--database", str(nolab)]) == 2
    assert "labels.npy" in _one_error_line(capsys)
    wide = _codeset(rng, 20, 32).save(tmp_path / "wide")
    assert main(["evaluate", "--query", str(q), "--database", str(wide)]) == 2
    line = _one_error_line(capsys)
    assert "16 bits" in line and "32 bits" in line
    assert main(["evaluate", "--query", str(q)]) == 2
    assert "--database is missing" in _one_error_line(capsys)
    assert main(["evaluate"]) == 2
    assert "no input" in _one_error_line(capsys)
    assert main(["evaluate", "--query", str(q), "--database", str(d), "--query-model", "m"]) == 2
    assert "both given" in _one_error_line(capsys)


def _health(distinct: int, n: int, balance: float, bucket: float, collapsed: bool) -> dict:
    return {
        "num_codes": n,
        "distinct_codes": distinct,
        "distinct_fraction": distinct / n,
        "bit_balance": balance,
        "largest_bucket_fraction": bucket,
        "collapsed": collapsed,
    }


def test_markdown_table_shape():
    row = {
        "protocol": "asymmetric",
        "bits": 64,
        "num_queries": 10,
        "num_database": 99,
        "map": 0.5,
        "precision_at_radius": 0.25,
        "map_tie_averaged": 0.375,
        "topk": 1000,
        "radius": 2,
        "code_health": {
            "query": _health(10, 10, 0.1, 0.1, False),
            "database": _health(1, 99, 0.5, 1.0, True),
        },
    }
    lines = markdown_table([row]).strip().splitlines()
    assert lines[0] == (
        "| protocol | bits | queries | database | mAP@1000 (tie-avg) | mAP@1000 (by position) "
        "| P@r<=2 | distinct codes (q / db) | bit balance (q / db) | largest bucket (db) "
        "| collapsed |"
    )
    assert lines[2] == (
        "| asymmetric | 64 | 10 | 99 | 0.3750 | 0.5000 | 0.2500 | 10 / 1 | 0.100 / 0.500 "
        "| 100.0% | database |"
    )
    # without the tie-averaged value the headline cell says so; names add a first column
    row = {**row, "map_tie_averaged": None}
    row["code_health"] = {**row["code_health"], "database": _health(99, 99, 0.0, 1 / 99, False)}
    lines = markdown_table([row], names=["student"], name_header="model").strip().splitlines()
    assert lines[0].startswith("| model | protocol |") and lines[0].count("|") == 13
    assert lines[1].count("---") == 12
    assert lines[2] == (
        "| student | asymmetric | 64 | 10 | 99 | - | 0.5000 | 0.2500 | 10 / 99 | 0.100 / 0.000 "
        "| 1.0% | no |"
    )
    with pytest.raises(ValueError, match="one name per row"):
        markdown_table([row], names=["a", "b"])


def _distinct_rows(codes: np.ndarray) -> int:
    return len({bytes(r) for r in codes})


def test_code_health_of_both_sides_and_collapse_warning(tmp_path, rng, capsys):
    """A collapsed database (one code for all) is flagged in the JSON, the table and on stderr."""
    q = _codeset(rng, 12, 16)
    d = _codeset(rng, 300, 16)
    d.codes[:] = d.codes[0]  # every database item has the same code
    qd, dd = q.save(tmp_path / "q"), d.save(tmp_path / "d")
    out = tmp_path / "r.json"
    assert (
        main(["evaluate", "--query", str(qd), "--database", str(dd), "--json-out", str(out)]) == 0
    )
    got = json.loads(out.read_text())
    assert got["code_health"] == {"query": code_health(q.codes), "database": code_health(d.codes)}
    assert got["code_health"]["query"]["distinct_codes"] == _distinct_rows(q.codes)
    assert got["code_health"]["database"]["distinct_codes"] == 1
    assert got["code_health"]["database"]["largest_bucket_fraction"] == 1.0
    assert got["code_health"]["database"]["collapsed"]
    assert not got["code_health"]["query"]["collapsed"]
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "database codes" in warnings[0] and "1 distinct" in warnings[0]
    row = captured.out.strip().splitlines()[-1].split("|")[1:-1]
    cells = [c.strip() for c in row]
    # the headline is the tie-averaged mAP: with one code for all, every order of the database
    # is a tie, so the expected AP is that of a uniformly random ranking
    assert cells[4] == f"{got['map_tie_averaged']:.4f}" and cells[5] == f"{got['map']:.4f}"
    assert cells[7] == f"{_distinct_rows(q.codes)} / 1" and cells[-1] == "database"


def test_tie_averaged_headline_equals_random_order_expectation(rng):
    """Constant database codes: the tie-averaged mAP@K is the mean over shuffled database orders."""
    q = _codeset(rng, 6, 8, classes=3)
    d = _codeset(rng, 9, 8, classes=3)
    d.codes[:] = 7
    got = evaluate_code_sets(q, d, topk=4, radius=0, curves=False)
    # brute force: every ranking is a permutation of the database (all at one distance)
    import itertools

    rel = (q.labels.astype(int) @ d.labels.T.astype(int)) > 0
    total = 0.0
    perms = list(itertools.permutations(range(9), 4))
    for perm in perms:
        r = rel[:, list(perm)]
        cum = np.cumsum(r, axis=1)
        prec = cum / np.arange(1, 5)
        hits = r.sum(axis=1)
        ap = np.where(hits > 0, (prec * r).sum(axis=1) / np.maximum(hits, 1), 0.0)
        total += ap.mean()
    assert got["map_tie_averaged"] == pytest.approx(total / len(perms))
    assert got["code_health"]["database"]["distinct_codes"] == 1


def test_library_entry_equals_the_command_line(tmp_path, code_dirs):
    q, d = code_dirs
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--query",
                str(q),
                "--database",
                str(d),
                "--k",
                "20",
                "--json-out",
                str(out),
            ]
        )
        == 0
    )
    lib = evaluate(EvaluationInputs(query=str(q), database=str(d), topk=20))
    assert json.loads(out.read_text()) == json.loads(json.dumps(lib))
    with pytest.raises(ValueError, match="--k 0"):
        evaluate(EvaluationInputs(query=str(q), database=str(d), topk=0))
    with pytest.raises(ValueError, match="--retrieval-protocol 'mixed'"):
        evaluate(EvaluationInputs(query=str(q), database=str(d), protocol="mixed"))


# ----------------------------------------------------------------------------- models and images


def _tiny_model_dir(
    tmp_path: Path, name: str, seed: int, bits: int = 16, img_size: int = 32
) -> Path:
    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(seed)
    model = build_model(ModelConfig(bits=bits, img_size=img_size, **TINY_VIT))
    return save_artifact(model, tmp_path / name)


@pytest.fixture
def image_folder(tmp_path, rng) -> Path:
    root = tmp_path / "images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            # not 32x32: the resize of the eval transform is exercised
            px = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def test_encode_dataset_equals_model_encode(tmp_path, image_folder):
    from hashkd.data import eval_transform, load_dataset
    from hashkd.encoding import encode_dataset
    from hashkd.models import load_artifact

    mdir = _tiny_model_dir(tmp_path, "m", seed=1)
    model = load_artifact(mdir)
    ds = load_dataset(str(image_folder)).subset([7, 0, 3, 9, 4, 5, 1])
    cs = encode_dataset(mdir, ds, batch_size=3, progress=False)
    tf = eval_transform(32, model.config.mean, model.config.std)
    x = torch.stack([tf(ds.load_image(i)) for i in range(len(ds))])
    assert np.array_equal(cs.codes, model.encode(x))
    assert np.array_equal(cs.codes, pack_codes(model(x).detach()))
    assert np.array_equal(cs.labels, ds.labels)
    assert cs.ids.tolist() == [7, 0, 3, 9, 4, 5, 1]
    assert cs.meta["model"] == str(mdir.resolve()) and cs.meta["bits"] == 16
    assert cs.meta["model_digest"] and cs.bits == 16
    assert cs.meta["model_config"] == model.config.to_dict()
    # the same weights give the same digest whether from a folder or in memory
    assert encode_dataset(model, ds, progress=False).meta["model_digest"] == cs.meta["model_digest"]


def test_models_and_data_symmetric_then_asymmetric(tmp_path, image_folder, capsys):
    from hashkd.data import load_dataset
    from hashkd.encoding import encode_dataset

    a = _tiny_model_dir(tmp_path, "student", seed=1)
    b = _tiny_model_dir(tmp_path, "teacher", seed=2)
    out = tmp_path / "r.json"
    rc = main(
        [
            "evaluate",
            "--query-model",
            str(a),
            "--query-data",
            str(image_folder),
            "--database-data",
            str(image_folder),
            "--k",
            "6",
            "--no-progress",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0
    sym = json.loads(out.read_text())
    ds = load_dataset(str(image_folder))
    codes = encode_dataset(a, ds, progress=False).codes
    # the database is shuffled with --seed (default 0): the oracle permutes it by hand
    perm = np.random.default_rng(0).permutation(len(ds))
    want = evaluate_codes(codes, codes[perm], ds.labels, ds.labels[perm], topk=6)
    assert sym["protocol"] == "symmetric" and sym["map"] == pytest.approx(want["map"], abs=1e-12)
    in_order = evaluate_codes(codes, codes, ds.labels, ds.labels, topk=6)
    assert sym["map_tie_averaged"] == pytest.approx(in_order["map_tie_averaged"], abs=1e-12)
    assert sym["splits"]["database"]["order"] == "shuffled"
    assert sym["splits"]["database"]["order_seed"] == 0
    assert (sym["num_queries"], sym["num_database"]) == (10, 10)

    saved = tmp_path / "codes"
    rc = main(
        [
            "evaluate",
            "--query-model",
            str(a),
            "--database-model",
            str(b),
            "--query-data",
            str(image_folder),
            "--database-data",
            str(image_folder),
            "--k",
            "6",
            "--no-progress",
            "--json-out",
            str(out),
            "--save-codes",
            str(saved),
        ]
    )
    assert rc == 0
    asym = json.loads(out.read_text())
    db_codes = encode_dataset(b, ds, progress=False).codes
    want = evaluate_codes(codes, db_codes[perm], ds.labels, ds.labels[perm], topk=6)
    assert asym["protocol"] == "asymmetric" and asym["map"] == pytest.approx(want["map"])
    # the saved code sets remember their models: evaluating them again says asymmetric too
    again = tmp_path / "again.json"
    assert (
        main(
            [
                "evaluate",
                "--query",
                str(saved / "query"),
                "--database",
                str(saved / "database"),
                "--k",
                "6",
                "--json-out",
                str(again),
            ]
        )
        == 0
    )
    re = json.loads(again.read_text())
    assert re["protocol"] == "asymmetric" and re["map"] == asym["map"]


def test_named_protocol_splits(tmp_path, capsys):
    a = _tiny_model_dir(tmp_path, "m", seed=3)
    out = tmp_path / "r.json"
    rc = main(
        [
            "evaluate",
            "--query-model",
            str(a),
            "--data",
            "digits",
            "--split-protocol",
            "digits",
            "--seed",
            "5",
            "--k",
            "100",
            "--no-progress",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0
    got = json.loads(out.read_text())
    from hashkd.data import load_dataset, make_splits

    splits = make_splits("digits", load_dataset("digits"), seed=5)
    assert got["num_queries"] == len(splits["query"]) == 200
    assert got["num_database"] == len(splits["database"])
    assert got["splits"]["query"] == {
        "data_spec": "digits",
        "split": "query",
        "protocol": "digits",
        "seed": 5,
    }


def test_model_mode_bad_inputs(tmp_path, image_folder, capsys):
    a = _tiny_model_dir(tmp_path, "a", seed=1)
    b32 = _tiny_model_dir(tmp_path, "b32", seed=2, bits=32)
    assert main(["evaluate", "--query-model", str(a), "--query-data", str(image_folder)]) == 2
    assert "--database-data is missing" in _one_error_line(capsys)
    assert (
        main(
            ["evaluate", "--query-model", str(a), "--database-model", str(b32), "--data", "digits"]
        )
        == 2
    )
    line = _one_error_line(capsys)
    assert "16-bit" in line and "32-bit" in line
    assert main(["evaluate", "--query-model", str(tmp_path / "none"), "--data", "digits"]) == 2
    assert "none" in _one_error_line(capsys)


def test_plots_compare_several_results_and_refuse_bad_input(tmp_path, rng):
    from hashkd.plots import write_plots

    q, d = _codeset(rng, 10, 16), _codeset(rng, 50, 16)
    a = evaluate_codes(q.codes, d.codes, q.labels, d.labels, topk=20)
    b = evaluate_codes(q.codes[:5], d.codes, q.labels[:5], d.labels, topk=20)
    paths = write_plots({"teacher": a, "student": b}, tmp_path / "p")
    assert [p.name for p in paths] == ["pr_curve.png", "precision_at_n.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
    lean = evaluate_codes(q.codes, d.codes, q.labels, d.labels, topk=20, curves=False)
    with pytest.raises(ValueError, match="no curves"):
        write_plots({"x": lean}, tmp_path / "p2")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        write_plots({"x": a}, tmp_path / "file")


def test_model_digest_handles_batchnorm_scalars():
    """BatchNorm's 0-d ``num_batches_tracked`` must not break the digest (CNN students)."""
    from hashkd.encoding import model_digest
    from hashkd.models import ModelConfig, build_model
    from tests.conftest import TINY_CNN

    a = build_model(ModelConfig(bits=16, **TINY_CNN))
    b = build_model(ModelConfig(bits=16, **TINY_CNN))
    assert model_digest(a) == model_digest(a)
    assert model_digest(a) != model_digest(b)  # different random init


@pytest.mark.parametrize("model_kind", ["cnn", "vit"])
def test_artifact_digest_equals_the_model_digest_without_building_the_model(
    tmp_path, monkeypatch, model_kind
):
    """The digest read from model.safetensors is the in-memory model's (BatchNorm scalars,
    int64 buffers included), and opening an encoder never builds the PyTorch model."""
    import hashkd.encoding as encoding
    from hashkd.models import ModelConfig, build_model, load_artifact, save_artifact
    from tests.conftest import TINY_CNN

    arch = TINY_CNN if model_kind == "cnn" else TINY_VIT
    torch.manual_seed(1)
    model = build_model(ModelConfig(bits=16, img_size=16, **arch))
    save_artifact(model, tmp_path / "m")
    expected = encoding.model_digest(load_artifact(tmp_path / "m"))
    assert encoding.model_digest(model) == expected
    assert encoding.artifact_digest(tmp_path / "m") == expected
    other = build_model(ModelConfig(bits=16, img_size=16, **arch))
    save_artifact(other, tmp_path / "other")
    assert encoding.artifact_digest(tmp_path / "other") != expected

    def no_model(*args, **kwargs):
        raise AssertionError("open_encoder built the PyTorch model")

    monkeypatch.setattr(encoding, "load_artifact", no_model)
    _, info = encoding.open_encoder(tmp_path / "m", backend="torch")
    assert info["model_digest"] == expected and info["bits"] == 16
    assert info["model_config"]["backbone"] == arch["backbone"]


def test_unreadable_files_are_skipped_and_counted_or_stop_with_strict(
    tmp_path, image_folder, capsys
):
    """evaluate reads image files like the other commands: skip + count, or --strict."""
    (image_folder / "dog" / "notes.jpg").write_text("not an image")
    small = _tiny_model_dir(tmp_path, "small", seed=1, img_size=16)  # queries at 16 px
    large = _tiny_model_dir(tmp_path, "large", seed=2)
    cache = tmp_path / "cache"
    argv = ["evaluate", "--query-model", str(small), "--database-model", str(large)]
    argv += ["--query-data", str(image_folder), "--database-data", str(image_folder)]
    argv += ["--k", "5", "--no-progress", "--cache", "disk", "--cache-dir", str(cache)]
    assert main([*argv, "--json-out", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image file " in err
    result = json.loads((tmp_path / "r.json").read_text())
    assert list(result["inputs"]["skipped_files"]) == [str(image_folder / "dog" / "notes.jpg")]
    assert (result["num_queries"], result["num_database"]) == (10, 10)
    # one decode, at the working size of the larger model: ceil(1.15 * 32) = 37 px
    assert [p.name for p in cache.iterdir()] == ["side-37"]

    assert main([*argv, "--strict"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "notes.jpg" in lines[0], lines


def test_shuffled_database_keeps_items_whole_and_takes_the_edge_off_sorted_ties():
    """A collapsed database (one code) of a class-sorted folder: in file order, ties broken by
    position rank class 0 first, so its queries score a perfect mAP@topk; shuffled, the
    position-broken value comes near the tie-averaged one, which the order cannot change."""
    from hashkd.codes import CodeSet
    from hashkd.evaluation import evaluate_code_sets, shuffled

    n = 200
    labels = np.zeros((n, 2), dtype=np.uint8)
    labels[: n // 2, 0] = 1
    labels[n // 2 :, 1] = 1
    db = CodeSet(codes=np.zeros((n, 2), np.uint8), ids=np.arange(n) + 100, labels=labels)
    q = CodeSet(codes=np.zeros((5, 2), np.uint8), ids=np.arange(5), labels=labels[:5])
    sorted_r = evaluate_code_sets(q, db, topk=50, curves=False)
    s = shuffled(db, 3)
    shuffled_r = evaluate_code_sets(q, s, topk=50, curves=False)
    assert sorted_r["map"] == pytest.approx(1.0, abs=1e-12)  # the artefact of file order
    assert shuffled_r["map_tie_averaged"] == pytest.approx(sorted_r["map_tie_averaged"], abs=1e-12)
    assert abs(shuffled_r["map"] - shuffled_r["map_tie_averaged"]) < 0.2
    assert shuffled_r["map_tie_averaged"] == pytest.approx(0.5, abs=0.05)  # half are relevant
    # every item keeps its code and labels; the order is the seed's permutation
    perm = np.random.default_rng(3).permutation(n)
    assert np.array_equal(s.ids, db.ids[perm]) and np.array_equal(s.labels, labels[perm])
    assert s.meta["order"] == "shuffled" and s.meta["order_seed"] == 3
    assert not np.array_equal(shuffled(db, 4).ids, s.ids)


# ----------------------------------------------------------------------------- --config


def test_config_file_gives_the_flags_and_flags_beside_it_win(tmp_path, code_dirs, capsys):
    q, d = code_dirs
    by_flags, by_file, overridden = (tmp_path / f"{n}.json" for n in ("flags", "file", "over"))
    argv = ["--query", str(q), "--database", str(d), "--k", "10", "--radius", "1"]
    assert main(["evaluate", *argv, "--no-tie-average", "--json-out", str(by_flags)]) == 0
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"query: {q}\ndatabase: {d}\nk: 10\nradius: 1\nno-tie-average: true\npn: null\n"
    )
    assert main(["evaluate", "--config", str(config), "--json-out", str(by_file)]) == 0
    assert json.loads(by_file.read_text()) == json.loads(by_flags.read_text())
    # a flag given beside the file wins; the script reads the same file
    assert script_main(["--config", str(config), "--k", "5", "--json-out", str(overridden)]) == 0
    report = json.loads(overridden.read_text())
    assert report["topk"] == 5 and report["radius"] == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nonsense: 3\n", "setting 'nonsense' is not known"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("progress: 3\n", "progress=3 is not valid: expected true or false"),
        ("k: [a\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_sentence_naming_it(tmp_path, text, needle, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(text)
    assert main(["evaluate", "--config", str(config)]) == 2
    line = _one_error_line(capsys)
    assert needle in line and "eval.yaml" in line
