"""``hashkd index build`` / ``hashkd index search`` in-process, against a numpy oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashkd.cli import main


def hamming(q, db):
    return (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)


def write_codeset(path, codes, ids):
    path.mkdir(parents=True)
    np.save(path / "codes.npy", codes)
    np.save(path / "ids.npy", ids)
    return path


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(11)
    centres = rng.integers(0, 256, (20, 4), dtype=np.uint8)
    db = centres[rng.integers(0, 20, 2000)] ^ (rng.random((2000, 4)) < 0.05).astype(
        np.uint8
    )  # many ties
    ids = rng.choice(10**6, 2000, replace=False).astype(np.int64)
    q = db[rng.integers(0, 2000, 15)]
    return (
        db,
        ids,
        q,
        write_codeset(tmp_path / "db", db, ids),
        write_codeset(tmp_path / "q", q, np.arange(15)),
    )


def _has_index_command():
    try:
        main(["index", "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return False


pytestmark = pytest.mark.skipif(
    not _has_index_command(),
    reason="'index' command not registered: run pip install -e . --no-deps",
)


@pytest.mark.parametrize("spec", ["flat", "multihash:2x16"])
def test_build_then_knn_search_matches_oracle(spec, sets, tmp_path):
    db, ids, q, dbdir, qdir = sets
    out, res = tmp_path / "i.idx", tmp_path / "r.json"
    assert (
        main(
            [
                "index",
                "build",
                str(dbdir),
                "--index-spec",
                spec,
                "--out",
                str(out),
                "--index-threads",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            ["index", "search", str(out), "--query", str(qdir), "--k", "7", "--json-out", str(res)]
        )
        == 0
    )
    got = json.loads(res.read_text())
    dist = hamming(q, db)
    for r in range(len(q)):
        order = np.lexsort((ids, dist[r]))[:7]  # nearest first, ties by ascending id
        assert got["ids"][r] == ids[order].tolist()
        assert got["distances"][r] == dist[r][order].tolist()


def test_range_search_json_matches_oracle(sets, tmp_path):
    db, ids, q, dbdir, qdir = sets
    out, res = tmp_path / "i.idx", tmp_path / "r.json"
    main(["index", "build", str(dbdir), "--index-spec", "multihash", "--out", str(out)])
    assert (
        main(
            [
                "index",
                "search",
                str(out),
                "--query",
                str(qdir),
                "--radius",
                "3",
                "--json-out",
                str(res),
            ]
        )
        == 0
    )
    got = json.loads(res.read_text())
    dist = hamming(q, db)
    assert len(got["ids"]) == len(q)
    for r in range(len(q)):
        sel = np.nonzero(dist[r] <= 3)[0]
        order = sel[np.lexsort((ids[sel], dist[r][sel]))]
        assert (
            got["ids"][r] == ids[order].tolist() and got["distances"][r] == dist[r][order].tolist()
        )


def test_k_larger_than_index_gives_short_lists(tmp_path):
    dbdir = write_codeset(tmp_path / "db", np.array([[0, 0], [1, 0]], np.uint8), np.array([4, 9]))
    main(["index", "build", str(dbdir), "--out", str(tmp_path / "i.idx")])
    main(
        [
            "index",
            "search",
            str(tmp_path / "i.idx"),
            "--query",
            str(dbdir),
            "--k",
            "5",
            "--json-out",
            str(tmp_path / "r.json"),
        ]
    )
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "ids": [[4, 9], [9, 4]],
        "distances": [[0, 1], [0, 1]],
    }


def test_bad_values_give_one_line_errors(sets, tmp_path, capsys):
    db, ids, q, dbdir, qdir = sets
    out = tmp_path / "i.idx"
    main(["index", "build", str(dbdir), "--out", str(out)])
    other = write_codeset(tmp_path / "wide", np.zeros((3, 8), np.uint8), np.arange(3))
    js = str(tmp_path / "r.json")
    cases = [
        (["index", "build", str(tmp_path / "nope"), "--out", str(out)], "does not exist"),
        (["index", "build", str(dbdir), "--index-spec", "bogus", "--out", str(out)], "bogus"),
        (
            ["index", "search", str(out), "--query", str(qdir), "--k", "0", "--json-out", js],
            "--k 0",
        ),
        (
            ["index", "search", str(out), "--query", str(qdir), "--radius", "-1", "--json-out", js],
            "--radius -1",
        ),
        (
            ["index", "search", str(out), "--query", str(other), "--k", "3", "--json-out", js],
            "64 bits",
        ),
        (["index", "search", str(out), "--query", str(qdir), "--json-out", js], "exactly one"),
        (
            [
                "index",
                "search",
                str(tmp_path / "none.idx"),
                "--query",
                str(qdir),
                "--k",
                "1",
                "--json-out",
                js,
            ],
            "does not exist",
        ),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "r.json").exists()


def test_every_option_has_help(capsys):
    for sub in ("build", "search"):
        with pytest.raises(SystemExit):
            main(["index", sub, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for opt in ("--index-threads", "--nprobe", "--ef-search", "--collection"):
            assert opt in text
    assert "ties by ascending id" in text and "distance <= R" in text
