"""Sharded ``hashkd encode --shard I/N`` + ``hashkd codes merge`` against a single-process encode.

The oracle of the single run is the runtime encoder applied image by image; a merge of shards
must equal the single run bit for bit (codes, ids, labels, meta).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hashkd import encoding
from hashkd.cli import main
from hashkd.codes import SHARD_MARKER, CodeSet, CodeSetError, merge_shards
from hashkd.encoding import Shard, encode_data, encode_shard
from hashkd.models import ModelConfig, build_model, save_artifact
from tests.conftest import TINY_VIT

REPO = Path(__file__).resolve().parents[1]


def _model(path: Path, seed: int, bits: int = 16) -> Path:
    torch.manual_seed(seed)
    return save_artifact(build_model(ModelConfig(bits=bits, img_size=32, **TINY_VIT)), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return _model(root / "a", 0), _model(root / "b", 1), _model(root / "c", 0, bits=32)


@pytest.fixture(scope="module")
def single(models, tmp_path_factory):
    """The single-process encode, as written to and read from disk (as the merge reads shards)."""
    codes = encode_data(models[0], "digits", split="query", progress=False, batch_size=64)
    return CodeSet.load(codes.save(tmp_path_factory.mktemp("single")))


def _shards(model, out, count, **kw):
    for i in range(count):
        encode_shard(model, "digits", out, Shard(i, count), split="query", progress=False, **kw)


def test_single_run_equals_the_runtime_image_by_image(models, single):
    from hashkd.data import load_dataset
    from hashkd.runtime import Encoder

    ds = load_dataset("digits")
    encoder = Encoder.from_artifact(models[0])
    some = single.ids[:: max(1, len(single) // 40)]
    want = encoder.encode([ds.load_image(int(i)) for i in some])
    pos = {int(i): p for p, i in enumerate(single.ids)}
    got = single.codes[[pos[int(i)] for i in some]]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(single.labels, ds.labels[single.ids])
    assert single.meta["split"] == "query" and single.meta["model_digest"]


@pytest.mark.parametrize("count", [1, 3])
def test_shards_then_merge_equal_the_single_run(models, single, tmp_path, count):
    _shards(models[0], tmp_path, count, num_workers=1 if count == 3 else 0, batch_size=50)
    sizes = [len(CodeSet.load(tmp_path / f"shard-{i}-of-{count}")) for i in range(count)]
    n = len(single)
    assert sizes == [(i + 1) * n // count - i * n // count for i in range(count)]
    merged = merge_shards([tmp_path])
    np.testing.assert_array_equal(merged.codes, single.codes)
    np.testing.assert_array_equal(merged.ids, single.ids)
    np.testing.assert_array_equal(merged.labels, single.labels)
    assert merged.meta == single.meta


def test_finished_shard_is_skipped_unfinished_one_encoded_again(models, tmp_path, monkeypatch):
    calls = []
    real = encoding.encode_with_runtime
    monkeypatch.setattr(
        encoding, "encode_with_runtime", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    run = lambda: encode_shard(models[0], "digits", tmp_path, Shard(0, 2), split="query")  # noqa: E731
    folder, encoded = run()
    assert encoded and len(calls) == 1 and (folder / SHARD_MARKER).is_file()
    mtime = (folder / "codes.npy").stat().st_mtime_ns
    assert run() == (folder, False) and len(calls) == 1
    assert (folder / "codes.npy").stat().st_mtime_ns == mtime
    (folder / SHARD_MARKER).unlink()  # a crash before the marker: not finished
    assert run() == (folder, True) and len(calls) == 2
    with pytest.raises(CodeSetError, match="another model"):
        encode_shard(models[1], "digits", tmp_path, Shard(0, 2), split="query")


def test_merge_refuses_mixed_missing_overlapping_and_unfinished(models, tmp_path):
    a, b, c = (tmp_path / x for x in "abc")
    _shards(models[0], a, 2)
    encode_shard(models[1], "digits", b, Shard(1, 2), split="query", progress=False)
    encode_shard(models[2], "digits", c, Shard(1, 2), split="query", progress=False)
    s0, s1 = a / "shard-0-of-2", a / "shard-1-of-2"
    with pytest.raises(CodeSetError, match="model_digest"):
        merge_shards([s0, b / "shard-1-of-2"])
    with pytest.raises(CodeSetError, match="bits=32"):
        merge_shards([s0, c / "shard-1-of-2"])
    with pytest.raises(CodeSetError, match="shard\\(s\\) 1 of 2 are missing"):
        merge_shards([s0])
    with pytest.raises(CodeSetError, match="given twice"):
        merge_shards([s0, s0, s1])
    encode_shard(models[0], "digits", tmp_path / "d", Shard(0, 3), split="query")
    with pytest.raises(CodeSetError, match="one of 3 shards"):
        merge_shards([s0, s1, tmp_path / "d" / "shard-0-of-3"])
    encode_shard(models[0], "digits", tmp_path / "e", Shard(0, 2), split="database")
    with pytest.raises(CodeSetError, match="split='query' but .* has 'database'"):
        merge_shards([tmp_path / "e" / "shard-0-of-2", s1])
    (s1 / SHARD_MARKER).unlink()
    with pytest.raises(CodeSetError, match="not finished"):
        merge_shards([a])


def test_shard_spec_and_torchrun_environment():
    assert Shard.parse("2/5") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"
    for bad in ("5/5", "1", "a/2", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="not valid"):
            Shard.parse(bad)
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    assert Shard.from_env({}) is None
    bounds = [Shard(i, 4).bounds(10) for i in range(4)]
    assert bounds == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_cli_torchrun_rank_and_merge(models, single, tmp_path, monkeypatch, capsys):
    argv = ["encode", str(models[0]), "--data", "digits", "--split", "query", "--no-progress"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    assert "shard 0/2" in capsys.readouterr().out
    assert main(["codes", "merge", str(tmp_path / "o"), "--out", str(tmp_path / "m")]) == 0
    np.testing.assert_array_equal(CodeSet.load(tmp_path / "m").codes, single.codes)
    assert main(["codes", "merge", str(tmp_path / "o" / "shard-0-of-2"), "--out", "x"]) == 2
    assert "missing" in capsys.readouterr().err


def test_two_processes_in_parallel_then_merge(models, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    argv = [sys.executable, "-m", "hashkd", "encode", str(models[0]), "--data", "digits"]
    procs = [
        subprocess.Popen(
            [
                *argv,
                "--shard",
                f"{i}/2",
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "s"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    whole = encode_data(models[0], "digits", progress=False)
    merged = merge_shards([tmp_path / "s"])
    np.testing.assert_array_equal(merged.codes, whole.codes)
    np.testing.assert_array_equal(merged.ids, whole.ids)
    np.testing.assert_array_equal(merged.labels, whole.labels)
    meta = json.loads((tmp_path / "s" / "shard-1-of-2" / "meta.json").read_text())
    assert meta["shard"] == {"index": 1, "count": 2, "start": 898, "stop": 1797, "total": 1797}


def test_onnx_export_is_used_and_shards_still_equal_the_single_run(tmp_path):
    pytest.importorskip("onnxruntime")
    from hashkd.export import export_model

    model = _model(tmp_path / "onnx-model", 2)
    export_model(model, "onnx", check_images=4)
    whole = encode_data(model, "digits", split="query", progress=False)
    assert whole.meta["backend"] == "onnx"
    _shards(model, tmp_path / "s", 2)
    merged = merge_shards([tmp_path / "s"])
    np.testing.assert_array_equal(merged.codes, whole.codes)
    np.testing.assert_array_equal(merged.ids, whole.ids)
