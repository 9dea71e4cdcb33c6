"""indexes: every FAISS backend against a brute-force numpy oracle, ids, persistence, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import indexes
from indexes import (
    DuplicateIdError,
    IndexFileError,
    UnknownIdError,
    UnsupportedOperation,
    create_index,
    load_index,
)
from indexes.rwlock import RWLock

BITS = 64
EXACT_SPECS = ["flat", "hash", "multihash", "multihash:4x16", "multihash:2x16"]
#: Documented minimum recall@10 (tie-aware) of the approximate backends on these test data
#: (measured: ivf:64 nprobe=4 0.91, hnsw:16 ef_search=64 0.93).
APPROX_SPECS = {"ivf:64": ({"nprobe": 4}, 0.85), "hnsw:16": ({}, 0.9)}


# -- the oracle --------------------------------------------------------------------------------
def hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Brute force: popcount of xor over unpacked bits (nq x nd)."""
    return (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)


def oracle_knn(q, db, ids, k):
    dist = hamming(q, db)
    out_d, out_i = [], []
    for row in dist:
        order = np.lexsort((ids, row))[:k]
        out_d.append(row[order])
        out_i.append(ids[order])
    return out_d, out_i


def oracle_range(q, db, ids, r):
    dist = hamming(q, db)
    return [{int(i): int(d) for d, i in zip(row, ids, strict=True) if d <= r} for row in dist]


def tie_aware_recall(found_d, true_d, k):
    """|found with d < d_k| + min(#found at d_k, #true at d_k), over k (any tie-break is right)."""
    dk = true_d[k - 1]
    f = found_d[found_d >= 0]
    hits = (f < dk).sum() + min((f == dk).sum(), (true_d[:k] == dk).sum())
    return hits / k


def clustered(rng, n, bits=BITS, centres=40, flips=3):
    """Codes near a few centres (some exact duplicates): many ties, like real hash codes."""
    c = rng.integers(0, 2, (centres, bits), dtype=np.uint8)
    x = c[rng.integers(0, centres, n)]
    mask = np.zeros_like(x)
    for j in range(flips):
        mask[np.arange(n), rng.integers(0, bits, n)] ^= rng.random(n) < 0.7 if j else 1
    return np.packbits(x ^ mask, axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    db = np.concatenate(
        [clustered(rng, 3000), rng.integers(0, 256, (1000, BITS // 8), dtype=np.uint8)]
    )
    ids = rng.choice(10**9, size=len(db), replace=False).astype(np.int64)
    q = np.concatenate(
        [db[rng.integers(0, len(db), 20)], rng.integers(0, 256, (10, BITS // 8), dtype=np.uint8)]
    )
    return db, ids, q


def build(spec, db, ids, **opts):
    index = create_index(spec, BITS, **opts)
    index.add(ids, db)
    return index


# -- top-k and range search against the oracle ------------------------------------------------
@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_exact_backends_equal_oracle_including_ties(spec, data):
    db, ids, q = data
    index = build(spec, db, ids)
    assert index.exact and len(index) == len(db) and index.bits == BITS
    for k in (1, 10, 100):
        dist, got = index.search(q, k)
        td, ti = oracle_knn(q, db, ids, k)
        assert dist.dtype == np.int32 and got.dtype == np.int64 and got.shape == (len(q), k)
        np.testing.assert_array_equal(dist, np.stack(td))
        np.testing.assert_array_equal(got, np.stack(ti))  # ties broken by ascending id


@pytest.mark.parametrize("spec", list(APPROX_SPECS))
def test_approximate_backends_recall(spec, data):
    db, ids, q = data
    options, min_recall = APPROX_SPECS[spec]
    index = build(spec, db, ids, **options)
    assert not index.exact
    dist, got = index.search(q, 10)
    td, _ = oracle_knn(q, db, ids, 10)
    truth = hamming(q, db)
    lookup = {int(i): p for p, i in enumerate(ids)}
    recalls = []
    for r in range(len(q)):
        valid = got[r] >= 0
        # every returned distance is the true distance of that id, and rows are sorted (d, id)
        assert all(
            truth[r, lookup[int(i)]] == d
            for d, i in zip(dist[r][valid], got[r][valid], strict=True)
        )
        pairs = list(zip(dist[r][valid], got[r][valid], strict=True))
        assert pairs == sorted(pairs)
        recalls.append(tie_aware_recall(dist[r], td[r], 10))
    assert np.mean(recalls) >= min_recall


def test_ties_resolved_by_ascending_id_across_the_kth_boundary():
    # 300 identical codes at distance 0 plus others: the 10 smallest ids must win, whatever
    # the insertion order.
    rng = np.random.default_rng(1)
    same = np.zeros((300, 8), np.uint8)
    other = rng.integers(1, 256, (500, 8), dtype=np.uint8)
    ids = rng.permutation(800).astype(np.int64) + 1000
    for spec in EXACT_SPECS:
        index = build(spec, np.concatenate([same, other]), ids)
        dist, got = index.search(np.zeros((1, 8), np.uint8), 10)
        assert dist[0].tolist() == [0] * 10
        assert got[0].tolist() == sorted(ids[:300])[:10], spec


@pytest.mark.parametrize("spec", ["flat", "hash", "multihash", "multihash:4x16", "ivf:16"])
def test_range_search_is_inclusive_and_matches_oracle(spec, data):
    db, ids, q = data
    index = build(spec, db, ids, **({"nprobe": 16} if spec.startswith("ivf") else {}))
    for r in (0, 1, 2, 5, 12):
        res = index.range_search(q, r)
        truth = oracle_range(q, db, ids, r)
        assert len(res) == len(q)
        for (d, i), t in zip(res, truth, strict=True):
            assert dict(zip(i.tolist(), d.tolist(), strict=True)) == t
            assert list(zip(d.tolist(), i.tolist(), strict=True)) == sorted(
                zip(d.tolist(), i.tolist(), strict=True)
            )


def test_radius_inclusive_hand_example():
    index = create_index("flat", 16)
    base = np.array([[0, 0]], np.uint8)
    codes = np.array([[0, 0], [0b11, 0], [0b111, 0], [0, 1]], np.uint8)  # distances 0, 2, 3, 1
    index.add([10, 20, 30, 40], codes)
    d, i = index.range_search(base, 2)[0]
    assert i.tolist() == [10, 40, 20] and d.tolist() == [0, 1, 2]
    assert index.range_search(base, 1)[0][1].tolist() == [10, 40]
    assert index.range_search(base, 0)[0][1].tolist() == [10]


def test_padding_when_fewer_than_k():
    index = build("flat", np.array([[1] * 8, [3] * 8], np.uint8), np.array([5, 6]))
    d, i = index.search(np.array([[1] * 8], np.uint8), 4)
    assert i.tolist() == [[5, 6, -1, -1]] and d.tolist() == [[0, 8, -1, -1]]
    empty = create_index("flat", 64)
    d, i = empty.search(np.zeros((2, 8), np.uint8), 3)
    assert (i == -1).all() and i.shape == (2, 3)


# -- ids: duplicates, replace, remove, get -----------------------------------------------------
@pytest.mark.parametrize("spec", ["flat", "ivf:16"])
def test_ids_survive_add_remove_save_load(spec, data, tmp_path):
    db, ids, q = data
    index = build(spec, db[:2000], ids[:2000])
    index.add(ids[2000:], db[2000:])
    removed = ids[::3]
    assert index.remove(removed) == len(removed)
    keep = np.ones(len(ids), bool)
    keep[::3] = False
    assert len(index) == keep.sum()
    np.testing.assert_array_equal(index.ids(), np.sort(ids[keep]))
    index.metadata["note"] = "x"
    index.save(tmp_path / "a.idx")
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]  # no temporary file left
    loaded = load_index(tmp_path / "a.idx", bits=BITS)
    assert type(loaded) is type(index) and loaded.spec == spec and loaded.metadata == {"note": "x"}
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[keep]))
    np.testing.assert_array_equal(loaded.get(ids[keep][:50]), db[keep][:50])
    assert ids[0] not in loaded and ids[1] in loaded
    for ix in (index, loaded):
        _, got = ix.search(q, 50)
        assert not np.isin(got, removed).any()
        if ix.exact:
            np.testing.assert_array_equal(got, np.stack(oracle_knn(q, db[keep], ids[keep], 50)[1]))
    with pytest.raises(UnknownIdError):
        loaded.get([ids[0]])


@pytest.mark.parametrize("spec", ["hnsw:16", "hash", "multihash"])
def test_side_id_map_survives_save_load(spec, data, tmp_path):
    db, ids, q = data
    index = build(spec, db[:1500], ids[:1500])
    index.add(ids[1500:], db[1500:])
    index.save(tmp_path / "b.idx")
    loaded = load_index(tmp_path / "b.idx")
    perm = np.random.default_rng(3).permutation(len(ids))[:200]
    np.testing.assert_array_equal(loaded.get(ids[perm]), db[perm])
    for a, b in zip(index.search(q, 10), loaded.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(loaded.search(q, 10)[1].ravel()) <= set(ids.tolist())


def test_duplicate_ids_refused_unless_replace(data):
    db, ids, _ = data
    index = build("flat", db[:100], ids[:100])
    new = np.full((2, 8), 255, np.uint8)
    with pytest.raises(DuplicateIdError) as err:
        index.add([ids[5], 123456789012], new)
    assert err.value.ids == [ids[5]] and str(ids[5]) in str(err.value)
    assert len(index) == 100 and 123456789012 not in index  # nothing added
    np.testing.assert_array_equal(index.get([ids[5]]), db[5:6])
    with pytest.raises(DuplicateIdError):
        index.add([1, 1], new)  # repeated within one call
    index.add([ids[5], 123456789012], new, replace=True)
    assert len(index) == 101
    np.testing.assert_array_equal(index.get([ids[5], 123456789012]), new)
    d, i = index.search(new[:1], 2)
    assert sorted(i[0].tolist()) == sorted([int(ids[5]), 123456789012]) and d[0].tolist() == [0, 0]
    index.upsert([ids[5]], db[5:6])
    np.testing.assert_array_equal(index.get([ids[5]]), db[5:6])


def test_remove_unknown_id_is_reported_and_changes_nothing(data):
    db, ids, _ = data
    index = build("flat", db[:100], ids[:100])
    with pytest.raises(UnknownIdError) as err:
        index.remove([ids[0], 77])
    assert err.value.ids == [77] and isinstance(err.value, KeyError)
    assert len(index) == 100 and ids[0] in index
    assert index.remove([ids[0], 77], missing_ok=True) == 1
    assert len(index) == 99 and ids[0] not in index


@pytest.mark.parametrize("spec", ["hnsw:16", "hash", "multihash"])
def test_unsupported_operations_raise_and_leave_index_intact(spec, data):
    db, ids, q = data
    index = build(spec, db[:500], ids[:500])
    before = index.search(q, 5)
    with pytest.raises(UnsupportedOperation, match="remove"):
        index.remove(ids[:3])
    with pytest.raises(UnsupportedOperation, match="replace"):
        index.add(ids[:2], db[600:602], replace=True)
    with pytest.raises(UnsupportedOperation):
        index.train(db)
    if "range_search" not in index.supports:
        with pytest.raises(UnsupportedOperation, match="range_search"):
            index.range_search(q, 2)
    assert len(index) == 500
    np.testing.assert_array_equal(index.get(ids[:3]), db[:3])
    for a, b in zip(before, index.search(q, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(UnsupportedOperation("x"), ValueError)


def test_supports_declared():
    assert {"remove", "replace", "range_search", "get"} <= create_index("flat", 64).supports
    assert "train" in create_index("ivf", 64).supports
    assert "remove" not in create_index("hnsw", 64).supports
    assert "range_search" not in create_index("hnsw", 64).supports
    assert "remove" not in create_index("multihash:4x16", 64).supports
    assert create_index("flat", 64).supports <= indexes.OPERATIONS


def test_ivf_lazy_and_explicit_training(data):
    db, ids, q = data
    lazy = create_index("ivf:16", BITS, nprobe=16)
    assert not lazy.is_trained
    lazy.add(ids[:1000], db[:1000])
    assert lazy.is_trained and len(lazy) == 1000
    explicit = create_index("ivf:16", BITS, nprobe=16)
    explicit.train(db)
    explicit.add(ids[:1000], db[:1000])
    with pytest.raises(UnsupportedOperation):
        explicit.train(db)
    # nprobe = nlist visits every list: exact
    td, ti = oracle_knn(q, db[:1000], ids[:1000], 10)
    np.testing.assert_array_equal(explicit.search(q, 10)[0], np.stack(td))
    with pytest.raises(ValueError, match="at least nlist"):
        create_index("ivf:64", BITS).add(ids[:10], db[:10])


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: create_index("bogus", 64),
        lambda: create_index("ivf:abc", 64),
        lambda: create_index("flat", 60),
        lambda: create_index("flat", 64, nprobe=3),
        lambda: create_index("multihash:8x16", 64),
        lambda: create_index("flat", 64).search(np.zeros((1, 8), np.uint8), 0),
        lambda: create_index("flat", 64).search(np.zeros((1, 4), np.uint8), 1),
        lambda: create_index("flat", 64).range_search(np.zeros((1, 8), np.uint8), -1),
        lambda: create_index("flat", 64).add([1.5], np.zeros((1, 8), np.uint8)),
        lambda: create_index("flat", 64).add([-3], np.zeros((1, 8), np.uint8)),
        lambda: create_index("flat", 64).add([1, 2], np.zeros((1, 8), np.uint8)),
        lambda: create_index("flat", 64).add([1], np.zeros((1, 8), np.float32)),
    ],
)
def test_bad_input_is_a_value_error_with_one_sentence(call):
    with pytest.raises(ValueError) as err:
        call()
    assert "\n" not in str(err.value) and len(str(err.value)) > 10


# -- persistence: refuse what is not ours ------------------------------------------------------
def test_truncated_corrupted_and_foreign_files_are_refused(data, tmp_path):
    db, ids, _ = data
    path = tmp_path / "x.idx"
    build("hash", db[:300], ids[:300]).save(path)
    raw = path.read_bytes()
    cases = {
        "truncated": raw[: len(raw) - 10],
        "header-only": raw[:20],
        "trailing": raw + b"junk",
        "foreign": b"\x93NUMPY" + raw[6:],
        "empty": b"",
    }
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    cases["corrupted"] = bytes(flipped)
    for name, content in cases.items():
        bad = tmp_path / f"{name}.idx"
        bad.write_bytes(content)
        with pytest.raises(IndexFileError):
            load_index(bad)
    with pytest.raises(IndexFileError, match="128-bit"):
        load_index(path, bits=128)
    with pytest.raises(IndexFileError, match="does not exist"):
        load_index(tmp_path / "missing.idx")
    assert len(load_index(path)) == 300  # the original is intact


def test_save_replaces_atomically(data, tmp_path):
    db, ids, _ = data
    path = tmp_path / "y.idx"
    index = build("flat", db[:100], ids[:100])
    index.save(path)
    index.add(ids[100:200], db[100:200])
    index.save(path)
    assert len(load_index(path)) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.idx"]


# -- threads -----------------------------------------------------------------------------------
def test_concurrent_searches_while_adding(data):
    db, ids, q = data
    base, extra = 2000, len(db) - 2000
    index = build("flat", db[:base], ids[:base])
    code_of = {int(i): c for i, c in zip(ids, db, strict=True)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                dist, got = index.search(q, 10)
                for r in range(len(q)):
                    pairs = list(zip(dist[r].tolist(), got[r].tolist(), strict=True))
                    assert pairs == sorted(pairs) and min(got[r]) >= 0
                    for d, i in pairs:  # each distance is the true one of that id
                        assert hamming(q[r : r + 1], code_of[i][None])[0, 0] == d
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    def writer():
        for s in range(base, base + extra, 100):
            index.add(ids[s : s + 100], db[s : s + 100])

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(index) == len(db)
    np.testing.assert_array_equal(index.search(q, 10)[1], np.stack(oracle_knn(q, db, ids, 10)[1]))


def test_rwlock_writer_excludes_readers():
    lock, log = RWLock(), []
    inside = threading.Event()

    def read():
        with lock.read():
            inside.set()
            log.append("r-in")
            threading.Event().wait(0.05)
            log.append("r-out")

    t = threading.Thread(target=read)
    t.start()
    inside.wait()
    with lock.write():
        log.append("w")
    t.join()
    assert log == ["r-in", "r-out", "w"]


# -- GPU: guarded, never constructed without a GPU ---------------------------------------------
def test_gpu_flat_refused_cleanly_without_gpu():
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present: the refusal path does not apply")
    code = "import indexes\ntry:\n    indexes.create_index('flat:gpu', 64)\nexcept ValueError as e:\n    print('refused:', e)\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr  # no abort
    assert "refused:" in out.stdout and "GPU" in out.stdout


@pytest.mark.gpu
def test_gpu_flat_matches_cpu(data):  # pragma: no cover - needs a GPU
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("no GPU visible to faiss")
    db, ids, q = data
    gpu, cpu = build("flat:gpu", db, ids), build("flat", db, ids)
    for a, b in zip(gpu.search(q, 10), cpu.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_concurrent_range_searches_with_different_radii_on_multihash(data):
    # range searches set FAISS's nflip: they must not leak into each other across threads
    db, ids, q = data
    index = build("multihash:4x16", db, ids)
    truth = {r: oracle_range(q, db, ids, r) for r in (0, 3, 6, 9)}
    errors: list[BaseException] = []

    def worker(r):
        try:
            for _ in range(5):
                for (d, i), t in zip(index.range_search(q, r), truth[r], strict=True):
                    assert dict(zip(i.tolist(), d.tolist(), strict=True)) == t
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in truth]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_untrained_ivf_round_trips(tmp_path, data):
    db, ids, q = data
    create_index("ivf:16", BITS, nprobe=16).save(tmp_path / "u.idx")
    loaded = load_index(tmp_path / "u.idx", nprobe=16)
    assert not loaded.is_trained and len(loaded) == 0
    loaded.add(ids[:500], db[:500])
    td, ti = oracle_knn(q, db[:500], ids[:500], 5)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], np.stack(ti))


# -- flat: codes kept in ascending-id order (format 2), format 1 files still read --------------
def test_flat_random_writes_match_a_dict_oracle(data):
    """Adds below, between and above existing ids, removes and upserts, checked after each step."""
    db, _, q = data
    rng = np.random.default_rng(11)
    index = create_index("flat", BITS)
    truth: dict[int, np.ndarray] = {}
    for step in range(12):
        op = ("add", "add", "remove", "upsert")[step % 4] if step else "add"
        if op == "add":
            new = rng.choice(np.arange(0, 5000, dtype=np.int64), 150, replace=False)
            new = new[~np.isin(new, list(truth))]
            codes = db[rng.integers(0, len(db), len(new))]
            index.add(new, codes)
            truth.update(zip(new.tolist(), codes, strict=True))
        elif op == "remove":
            gone = rng.choice(sorted(truth), 60, replace=False)
            assert index.remove(gone) == 60
            for i in gone.tolist():
                del truth[i]
        else:
            old = rng.choice(sorted(truth), 40, replace=False)
            fresh = np.setdiff1d(np.arange(5000, 5040), list(truth))[:10]
            both = np.concatenate([old, fresh])
            codes = db[rng.integers(0, len(db), len(both))]
            index.upsert(both, codes)
            truth.update(zip(both.tolist(), codes, strict=True))
        ids = np.array(sorted(truth), dtype=np.int64)
        codes = np.stack([truth[i] for i in ids.tolist()])
        assert len(index) == len(ids)
        np.testing.assert_array_equal(index.ids(), ids)
        perm = rng.permutation(len(ids))
        np.testing.assert_array_equal(index.get(ids[perm]), codes[perm])
        td, ti = oracle_knn(q, codes, ids, 20)
        dist, got = index.search(q, 20)
        np.testing.assert_array_equal(dist, np.stack(td))
        np.testing.assert_array_equal(got, np.stack(ti))
        hits = index.range_search(q[:5], 20)
        for (d, i), t in zip(hits, oracle_range(q[:5], codes, ids, 20), strict=True):
            assert dict(zip(i.tolist(), d.tolist(), strict=True)) == t


def _as_format_1(path: Path) -> None:
    """Rewrite the version field of a saved file to 1 (the header is not checksummed)."""
    raw = bytearray(path.read_bytes())
    raw[8:12] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("n", [0, 700])
def test_flat_reads_format_1_files(n, data, tmp_path):
    """A version-1 flat file (FAISS IndexBinaryIDMap2 holding the ids) loads and re-saves."""
    import faiss

    from indexes.storage import FORMAT_VERSION, write_index_file

    db, ids, q = data
    rng = np.random.default_rng(5)
    pick = rng.choice(len(db), n, replace=False)
    legacy = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(BITS))
    if n:
        legacy.add_with_ids(db[pick], ids[pick])  # FAISS storage in insertion (not id) order
    header = {"backend": "faiss", "kind": "flat", "spec": "flat", "bits": BITS, "count": n}
    header |= {"options": {}, "metadata": {"src": "v1"}}
    path = tmp_path / "v1.idx"
    sections = {"faiss": faiss.serialize_index_binary(legacy).tobytes()}
    write_index_file(path, header, sections)
    _as_format_1(path)
    loaded = load_index(path, bits=BITS)
    assert len(loaded) == n and loaded.metadata == {"src": "v1"}
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[pick]))
    if n:
        np.testing.assert_array_equal(loaded.get(ids[pick][::-1]), db[pick][::-1])
        np.testing.assert_array_equal(
            loaded.search(q, 15)[1], np.stack(oracle_knn(q, db[pick], ids[pick], 15)[1])
        )
    loaded.save(tmp_path / "v2.idx")
    assert int.from_bytes((tmp_path / "v2.idx").read_bytes()[8:12], "little") == FORMAT_VERSION
    again = load_index(tmp_path / "v2.idx")
    np.testing.assert_array_equal(again.ids(), loaded.ids())
    if n:
        np.testing.assert_array_equal(again.search(q, 15)[1], loaded.search(q, 15)[1])


def test_newer_format_version_refused_and_bad_flat_ids_refused(data, tmp_path):
    db, ids, _ = data
    path = tmp_path / "f.idx"
    build("flat", db[:50], ids[:50]).save(path)
    raw = bytearray(path.read_bytes())
    raw[8:12] = (3).to_bytes(4, "little")
    (tmp_path / "v3.idx").write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="format version 3"):
        load_index(tmp_path / "v3.idx")
    # a format-2 flat file whose ids are not ascending (codes would be misattributed)
    import faiss

    from indexes.storage import npy_bytes, write_index_file

    flat = faiss.IndexBinaryFlat(BITS)
    flat.add(db[:3])
    header = {"backend": "faiss", "kind": "flat", "spec": "flat", "bits": BITS, "count": 3}
    sections = {
        "faiss": faiss.serialize_index_binary(flat).tobytes(),
        "ids": npy_bytes(np.array([5, 2, 9], dtype=np.int64)),
    }
    write_index_file(tmp_path / "unsorted.idx", header, sections)
    with pytest.raises(IndexFileError, match="ascending"):
        load_index(tmp_path / "unsorted.idx")
