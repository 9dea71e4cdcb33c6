"""Code sets record where each code came from (``paths.json``): written by ``hashkd encode``
(whole and sharded), kept by ``hashkd codes merge``, read back by both code-set readers and
shown by ``hashkd index search``.

The oracle of every path is an independent listing of the generated folder: classes sorted,
files sorted inside each class, so the image with id ``i`` is the ``i``-th file listed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hashkd.cli import main
from hashkd.codes import CodeSet, CodeSetError, merge_shards, resolve_source, source_paths
from hashkd.encoding import Shard, encode_data, encode_shard
from tests.conftest import TINY_VIT
from tests.photos import make_photos
from tests.test_service_support import build_artifact, hamming


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("m") / "vit", TINY_VIT, 16, 0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("data") / "photos"
    return root, make_photos(root)


def test_source_paths_are_relative_to_the_root_absolute_outside_and_uris_kept(tmp_path):
    root = tmp_path / "root"
    inside = root / "a" / "b.jpg"
    outside = tmp_path / "elsewhere" / "c.jpg"
    got = source_paths([inside, str(outside), "s3://bucket/d.jpg"], root)
    assert got == ["a/b.jpg", outside.as_posix(), "s3://bucket/d.jpg"]
    # a sibling folder whose name starts like the root's is outside it
    assert source_paths([tmp_path / "rootx" / "e.jpg"], root) == [
        (tmp_path / "rootx" / "e.jpg").as_posix()
    ]
    assert resolve_source("a/b.jpg", root) == os.path.join(str(root), "a/b.jpg")
    assert resolve_source("s3://bucket/d.jpg", root) is None
    assert resolve_source("a/b.jpg", None) is None


def test_encode_writes_every_images_path_relative_to_the_data_folder(model, photos, tmp_path):
    root, listed = photos
    out = tmp_path / "codes"
    assert (
        main(["encode", str(model), "--data", str(root), "--no-progress", "--out", str(out)]) == 0
    )
    on_disk = json.loads((out / "paths.json").read_text())
    assert on_disk == listed
    codes = CodeSet.load(out)
    assert codes.paths == listed and codes.ids.tolist() == list(range(len(listed)))
    assert codes.path_root == Path(os.path.abspath(root)).as_posix()
    # each path names the file the code was made from: encoding that file alone gives it
    from hashkd.runtime import Encoder

    encoder = Encoder.from_artifact(model)
    for i in (0, len(listed) - 1):
        file = resolve_source(codes.paths[i], codes.path_root)
        np.testing.assert_array_equal(encoder.encode([file])[0], codes.codes[i])


def test_a_split_keeps_the_paths_of_its_own_images(model, photos):
    root, listed = photos
    query = encode_data(model, str(root), split="query", progress=False)
    assert len(query) < len(listed)
    assert query.paths == [listed[int(i)] for i in query.ids]


def test_shards_merge_with_their_paths_in_the_images_order(model, photos, tmp_path):
    root, listed = photos
    for i in range(3):
        encode_shard(model, str(root), tmp_path, Shard(i, 3), progress=False)
    shard = CodeSet.load(tmp_path / "shard-1-of-3")
    assert shard.paths == [listed[int(i)] for i in shard.ids]
    merged = merge_shards([tmp_path])
    assert merged.paths == listed and merged.ids.tolist() == list(range(len(listed)))
    assert merged.path_root == Path(os.path.abspath(root)).as_posix()
    # a shard without paths cannot be merged with shards that have them
    (tmp_path / "shard-2-of-3" / "paths.json").unlink()
    with pytest.raises(CodeSetError, match="some shards have paths and others not"):
        merge_shards([tmp_path])


def test_in_memory_data_has_no_paths_and_a_code_set_without_them_round_trips(model, tmp_path):
    codes = encode_data(model, "digits", split="query", progress=False)
    assert codes.paths is None and "path_root" not in codes.meta
    back = CodeSet.load(codes.save(tmp_path / "c"))
    assert back.paths is None and not (tmp_path / "c" / "paths.json").exists()


def test_inconsistent_paths_are_refused_naming_the_file(tmp_path):
    codes = np.zeros((3, 2), dtype=np.uint8)
    with pytest.raises(CodeSetError, match="3 codes but 2 paths"):
        CodeSet(codes, np.arange(3), paths=["a", "b"])
    CodeSet(codes, np.arange(3), paths=["a", "b", "c"]).save(tmp_path / "c")
    (tmp_path / "c" / "paths.json").write_text('["a", "b"]')
    with pytest.raises(CodeSetError, match="not consistent: 3 codes but 2 paths"):
        CodeSet.load(tmp_path / "c")
    (tmp_path / "c" / "paths.json").write_text("[not json")
    with pytest.raises(CodeSetError, match="paths.json' is not valid JSON"):
        CodeSet.load(tmp_path / "c")
    # saving without paths removes a stale paths.json
    CodeSet(codes, np.arange(3)).save(tmp_path / "c")
    assert not (tmp_path / "c" / "paths.json").exists()


def test_index_search_names_each_hits_source_file(model, photos, tmp_path, capsys):
    root, listed = photos
    db = encode_data(model, str(root), progress=False).save(tmp_path / "db")
    query = encode_data(model, str(root), split="query", progress=False).save(tmp_path / "q")
    index = tmp_path / "db.hkdidx"
    assert main(["index", "build", str(db), "--spec", "flat", "--out", str(index)]) == 0
    out = tmp_path / "hits.json"
    assert (
        main(["index", "search", str(index), "--query", str(query), "--k", "4", "--json", str(out)])
        == 0
    )
    hits = json.loads(out.read_text())
    q = CodeSet.load(query)
    assert hits["query_paths"] == q.paths
    # every hit's path is the listing's file of that id (the index holds ids = listing order)
    for ids, paths in zip(hits["ids"], hits["paths"], strict=True):
        assert len(ids) == 4 and paths == [listed[i] for i in ids]
    # the hits are the brute-force nearest, nearest first, ties by id
    dbset = CodeSet.load(db)
    for qcode, ids, dist in zip(q.codes, hits["ids"], hits["distances"], strict=True):
        want = sorted(
            zip(hamming(qcode, dbset.codes)[0].tolist(), dbset.ids.tolist(), strict=True)
        )[:4]
        assert [list(p) for p in zip(dist, ids, strict=True)] == [list(p) for p in want]
    printed = capsys.readouterr().out
    first = f"{hits['paths'][0][0]} (d={hits['distances'][0][0]})"
    assert f"{q.paths[0]}: {first}" in printed
    # --database names the code set when the one the index was built from moved away
    moved = tmp_path / "moved"
    (tmp_path / "db").rename(moved)
    assert (
        main(["index", "search", str(index), "--query", str(query), "--k", "4", "--json", str(out)])
        == 0
    )
    assert "paths" not in json.loads(out.read_text())
    args = ["--database", str(moved)]
    assert (
        main(
            [
                "index",
                "search",
                str(index),
                "--query",
                str(query),
                "--k",
                "4",
                "--json",
                str(out),
                *args,
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["paths"] == hits["paths"]
