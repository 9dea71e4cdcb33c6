"""FlatIndex on chunked storage: O(batch) writes, tombstones, out-of-order ids, compaction.

Every check compares with a brute force over a plain dict {id: code} (the model), after random
sequences of the writes a service makes: in-order adds (its own ids), out-of-order explicit
ids, replaced codes, deletes, saves and loads -- with tiny chunks and a tiny compaction
threshold so that every path (new chunk, delta, tombstone, compaction) runs many times.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from indexes import chunked_codes, create_index, load_index, sorted_ids
from indexes.hamming_scan import distances

BITS = 32


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(chunked_codes, "CHUNK_SIZE", 7)
    monkeypatch.setattr(chunked_codes, "MIN_SLACK", 5)


def brute_knn(model: dict[int, np.ndarray], queries: np.ndarray, k: int):
    ids = np.array(sorted(model), dtype=np.int64)
    if not len(ids):
        return [[] for _ in queries]
    db = np.stack([model[i] for i in ids])
    dist = distances(db, queries)
    out = []
    for q in range(len(queries)):
        order = np.lexsort((ids, dist[q]))[:k]
        out.append(list(zip(dist[q][order].tolist(), ids[order].tolist(), strict=True)))
    return out


def check_against(index, model, rng, k=9):
    queries = rng.integers(0, 256, (4, BITS // 8), dtype=np.uint8)
    dist, ids = index.search(queries, k)
    for q, want in enumerate(brute_knn(model, queries, k)):
        got = [(int(d), int(i)) for d, i in zip(dist[q], ids[q], strict=True) if i >= 0]
        assert got == want
    assert len(index) == len(model)
    assert index.ids().tolist() == sorted(model)
    for q, (d, i) in enumerate(index.range_search(queries, 12)):
        want = [(dd, ii) for dd, ii in brute_knn(model, queries[q : q + 1], len(model))[0]]
        assert list(zip(d.tolist(), i.tolist(), strict=True)) == [w for w in want if w[0] <= 12]
    if model:
        some = rng.choice(sorted(model), size=min(5, len(model)), replace=False)
        assert np.array_equal(index.get(some), np.stack([model[int(i)] for i in some]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_writes_match_brute_force(tiny_chunks, tmp_path, seed):
    rng = np.random.default_rng(seed)
    index = create_index("flat", BITS)
    model: dict[int, np.ndarray] = {}
    next_id = 0
    for step in range(60):
        op = rng.choice(
            ["append", "explicit", "replace", "delete", "save"], p=[0.4, 0.2, 0.1, 0.25, 0.05]
        )
        if op == "append":
            n = int(rng.integers(1, 12))
            ids = np.arange(next_id, next_id + n)
            next_id += n + int(rng.integers(0, 3))
            codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
            codes[: n // 2] = codes[0]  # duplicate codes: ties ranked by id
            index.add(ids, codes)
            model.update({int(i): c for i, c in zip(ids, codes, strict=True)})
        elif op == "explicit":  # ids below the largest: the delta segment
            free = sorted(set(range(next_id)) - set(model))
            if not free:
                continue
            ids = rng.choice(free, size=min(len(free), int(rng.integers(1, 4))), replace=False)
            codes = rng.integers(0, 256, (len(ids), BITS // 8), dtype=np.uint8)
            index.add(ids, codes)
            model.update({int(i): c for i, c in zip(ids, codes, strict=True)})
        elif op == "replace" and model:
            ids = rng.choice(sorted(model), size=min(3, len(model)), replace=False)
            codes = rng.integers(0, 256, (len(ids), BITS // 8), dtype=np.uint8)
            index.upsert(ids, codes)
            model.update({int(i): c for i, c in zip(ids, codes, strict=True)})
        elif op == "delete" and model:
            ids = rng.choice(
                sorted(model), size=min(len(model), int(rng.integers(1, 6))), replace=False
            )
            assert index.remove(ids) == len(ids)
            for i in ids:
                del model[int(i)]
        elif op == "save":
            index.save(tmp_path / f"s{step}.idx")
            index = load_index(tmp_path / f"s{step}.idx")
        check_against(index, model, rng)
    store = index._store
    assert store.dead <= max(chunked_codes.MIN_SLACK, len(store) // 4)  # compaction ran
    assert len(store.delta_ids) <= max(chunked_codes.MIN_SLACK, len(store) // 4)


def test_appends_fill_chunks_in_place(tiny_chunks):
    index = create_index("flat", BITS)
    rng = np.random.default_rng(5)
    index.add(np.arange(5), rng.integers(0, 256, (5, 4), dtype=np.uint8))
    first = index._store.chunks[0]
    index.add(np.arange(5, 20), rng.integers(0, 256, (15, 4), dtype=np.uint8))
    assert index._store.chunks[0] is first  # the full chunk was not copied
    assert [c.fill for c in index._store.chunks] == [7, 7, 6]
    assert not len(index._store.delta_ids)
    # consecutive ids keep no id array and no live flags (no memory committed for them)
    assert all(c.dense and c.alive is None for c in index._store.chunks)
    index.add([30, 31], rng.integers(0, 256, (2, 4), dtype=np.uint8))  # a gap after 19
    last = index._store.chunks[2]  # 30 fills its last slot, 31 opens a fourth chunk
    assert not last.dense and last.ids().tolist() == [14, 15, 16, 17, 18, 19, 30]
    index.remove([15])
    assert last.alive is not None and index._store.chunks[0].alive is None
    assert index.ids().tolist() == [*range(15), *range(16, 20), 30, 31]


def test_deletes_are_tombstones_until_compaction(tiny_chunks):
    index = create_index("flat", BITS)
    codes = np.random.default_rng(6).integers(0, 256, (40, 4), dtype=np.uint8)
    index.add(np.arange(40), codes)
    index.remove([3, 4, 5])
    assert index._store.dead == 3 and len(index) == 37
    dist, ids = index.search(codes[3:4], 1)
    assert ids[0, 0] != 3  # a tombstone is never returned, even at distance 0
    index.remove(np.arange(10, 30))  # past a quarter: compacted
    assert index._store.dead == 0 and len(index) == 17


def test_compaction_is_built_while_searches_run(tiny_chunks, monkeypatch):
    index = create_index("flat", BITS)
    codes = np.random.default_rng(7).integers(0, 256, (30, 4), dtype=np.uint8)
    index.add(np.arange(30), codes)
    finished = []
    real = chunked_codes.ChunkedCodes.compacted

    def compacted_with_a_search(self):
        t = threading.Thread(target=lambda: finished.append(index.search(codes[:1], 3)))
        t.start()
        t.join(timeout=30)  # would hang if the exclusive lock were held during the build
        return real(self)

    monkeypatch.setattr(chunked_codes.ChunkedCodes, "compacted", compacted_with_a_search)
    index.remove(np.arange(0, 20))
    assert len(finished) == 1 and index._store.dead == 0


def test_old_format_files_still_load(tmp_path):
    """A format-2 file (FAISS IndexBinaryFlat + ids) of an earlier release loads unchanged."""
    import faiss

    from indexes.storage import npy_bytes, write_index_file

    rng = np.random.default_rng(8)
    ids = np.array([2, 5, 9, 11], dtype=np.int64)
    codes = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    header = {
        "backend": "faiss",
        "kind": "flat",
        "spec": "flat",
        "bits": 64,
        "count": 4,
        "options": {},
        "metadata": {},
    }
    sections = {"faiss": faiss.serialize_index_binary(flat).tobytes(), "ids": npy_bytes(ids)}
    write_index_file(tmp_path / "old.idx", header, sections)
    loaded = load_index(tmp_path / "old.idx")
    assert loaded.ids().tolist() == ids.tolist()
    assert np.array_equal(loaded.get(ids), codes)


@pytest.mark.parametrize("seed", [0, 1])
def test_sorted_id_set_operations_match_numpy(seed):
    rng = np.random.default_rng(seed)
    a = np.unique(rng.integers(0, 500, 200))
    b = np.unique(rng.integers(0, 500, 150))
    assert np.array_equal(sorted_ids.union(a, b), np.union1d(a, b))
    assert np.array_equal(sorted_ids.intersect(a, b), np.intersect1d(a, b))
    assert np.array_equal(sorted_ids.union_all([a, b, a[:3]]), np.union1d(a, b))
    pos = sorted_ids.positions(a, b)
    for p, x in zip(pos, b, strict=True):
        assert (p == -1 and x not in a) or a[p] == x
    assert sorted_ids.positions(a, np.empty(0, np.int64)).shape == (0,)
    assert sorted_ids.positions(np.empty(0, np.int64), b).tolist() == [-1] * len(b)


@pytest.mark.parametrize("fraction", [0.01, 0.5])  # gathered, and scanned in place with a mask
def test_search_subset_matches_brute_force(tiny_chunks, fraction):
    rng = np.random.default_rng(11)
    index = create_index("flat", BITS)
    codes = rng.integers(0, 256, (200, BITS // 8), dtype=np.uint8)
    codes[10:40] = codes[10]  # ties
    index.add(np.arange(0, 400, 2), codes)
    index.add([3, 7, 11], codes[:3])  # delta
    index.remove([4, 10, 22])  # tombstones
    model = {int(i): c for i, c in zip(np.arange(0, 400, 2), codes, strict=True)}
    model.update({3: codes[0], 7: codes[1], 11: codes[2]})
    for i in (4, 10, 22):
        del model[i]
    subset = np.sort(rng.choice(np.arange(0, 410), int(410 * fraction) + 3, replace=False))
    subset = np.union1d(subset, [3, 4, 12, 14])  # a delta id, a tombstone
    wanted = {i: c for i, c in model.items() if i in set(subset.tolist())}
    queries = np.concatenate([codes[10:11], rng.integers(0, 256, (3, BITS // 8), dtype=np.uint8)])
    dist, ids = index.search_subset(queries, subset, 12)
    for q, want in enumerate(brute_knn(wanted, queries, 12)):
        got = [(int(d), int(i)) for d, i in zip(dist[q], ids[q], strict=True) if i >= 0]
        assert got == want


@pytest.mark.slow
def test_millions_of_codes_with_real_chunk_sizes_match_brute_force():
    """3 M codes in the default 1 M-code chunks: appends, tombstones, delta, a compaction."""
    rng = np.random.default_rng(21)
    n = 3_000_000
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    index = create_index("flat", 64)
    for s in range(0, n, 250_000):
        index.add(np.arange(s, s + 250_000) * 2, codes[s : s + 250_000])  # even ids
    alive = np.ones(n, dtype=bool)
    gone = rng.choice(n, 50_000, replace=False)
    index.remove(gone * 2)
    alive[gone] = False
    extra = rng.integers(0, 256, (1_000, 8), dtype=np.uint8)
    index.add(np.arange(1_000) * 2 + 1, extra)  # odd ids: the delta
    all_ids = np.concatenate([np.arange(n)[alive] * 2, np.arange(1_000) * 2 + 1])
    all_codes = np.concatenate([codes[alive], extra])
    order = np.argsort(all_ids)
    all_ids, all_codes = all_ids[order], all_codes[order]
    queries = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    dist, ids = index.search(queries, 20)
    subset = np.sort(rng.choice(all_ids, 400_000, replace=False))  # scanned with a mask
    sdist, sids = index.search_subset(queries, subset, 20)
    in_subset = np.isin(all_ids, subset)
    full = distances(all_codes, queries)
    for q in range(3):
        order = np.lexsort((all_ids, full[q]))[:20]
        assert ids[q].tolist() == all_ids[order].tolist()
        assert dist[q].tolist() == full[q][order].tolist()
        sel = np.flatnonzero(in_subset)
        order = sel[np.lexsort((all_ids[sel], full[q][sel]))[:20]]
        assert sids[q].tolist() == all_ids[order].tolist()
        assert sdist[q].tolist() == full[q][order].tolist()
    index.remove(all_ids[: len(all_ids) // 2])  # past a quarter dead: compacted
    assert index._store.dead == 0 and len(index) == len(all_ids) - len(all_ids) // 2
    assert np.array_equal(index.get(all_ids[-5:]), all_codes[-5:])
