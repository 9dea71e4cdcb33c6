"""indexes.hamming_scan: the exact k-NN kernel against a brute-force numpy oracle."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from indexes import create_index, hamming_scan
from indexes.hamming_scan import BLOCK, CHUNK, knn_scan

pytestmark = pytest.mark.skipif(not hamming_scan.AVAILABLE, reason="numba is not installed")


def oracle(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpacked-bit Hamming distances, rows ordered by (distance, position)."""
    dist = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)
    pos = np.arange(db.shape[0])
    out_d = np.full((q.shape[0], k), -1, np.int32)
    out_p = np.full((q.shape[0], k), -1, np.int64)
    for i, row in enumerate(dist):
        order = np.lexsort((pos, row))[:k]
        out_d[i, : len(order)] = row[order]
        out_p[i, : len(order)] = order
    return out_d, out_p


def clustered(rng: np.random.Generator, n: int, nbytes: int, centres: int = 5, flip: float = 0.04):
    """Codes near a few centres: many equal distances, so tie order is exercised."""
    c = rng.integers(0, 256, (centres, nbytes), dtype=np.uint8)
    bits = np.unpackbits(c[rng.integers(0, centres, n)], axis=1)
    bits ^= (rng.random(bits.shape) < flip).astype(np.uint8)
    return np.packbits(bits, axis=1)


# code sizes cover every machine-word layout: uint8 (3, 5 bytes), uint16, uint32, uint64, 2-4 words
@pytest.mark.parametrize("nbytes", [1, 2, 3, 4, 5, 6, 8, 16, 24, 32])
@pytest.mark.parametrize("k", [1, 7, 300])
def test_equals_oracle_with_ties_by_position(nbytes, k):
    rng = np.random.default_rng(nbytes * 1000 + k)
    n = BLOCK + 2 * CHUNK + 37  # a partial last block and a partial last run
    db = clustered(rng, n, nbytes)
    q = np.concatenate([clustered(rng, 6, nbytes), db[[0, n - 1]]])  # exact matches too
    d, p = knn_scan(db, q, k)
    od, op = oracle(db, q, k)
    np.testing.assert_array_equal(d, od)
    np.testing.assert_array_equal(p, op)


def test_all_equal_codes_keep_the_earliest_positions():
    """Every code at the same distance: the k smallest positions win (hand example)."""
    db = np.full((3 * BLOCK, 8), 0b1010_1010, np.uint8)
    q = np.zeros((2, 8), np.uint8)
    d, p = knn_scan(db, q, 5)
    assert (d == 32).all()
    np.testing.assert_array_equal(p, np.tile(np.arange(5), (2, 1)))


def test_hand_example_distances():
    db = np.array([[0b0000_0000], [0b1111_1111], [0b0000_0111], [0b0000_0001]], np.uint8)
    q = np.array([[0b0000_0011]], np.uint8)
    d, p = knn_scan(db, q, 4)
    np.testing.assert_array_equal(d, [[1, 1, 2, 6]])  # 0b01 and 0b111 tie at 1: position 2 < 3
    np.testing.assert_array_equal(p, [[2, 3, 0, 1]])


def test_fewer_codes_than_k_and_empty_inputs():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (2, 8), dtype=np.uint8)
    d, p = knn_scan(db, q, 5)
    od, op = oracle(db, q, 5)
    np.testing.assert_array_equal(d, od)
    np.testing.assert_array_equal(p, op)
    assert (p[:, 3:] == -1).all() and (d[:, 3:] == -1).all()
    d, p = knn_scan(db[:0], q, 2)
    assert d.shape == (2, 2) and (p == -1).all()
    d, p = knn_scan(db, q[:0], 2)
    assert d.shape == (0, 2)


def test_threads_give_the_same_result():
    rng = np.random.default_rng(1)
    db = clustered(rng, 3000, 8)
    q = clustered(rng, 600, 8)  # > 2 x QUERY_CHUNK: really split over threads
    one = knn_scan(db, q, 9, threads=1)
    three = knn_scan(db, q, 9, threads=3)
    np.testing.assert_array_equal(one[0], three[0])
    np.testing.assert_array_equal(one[1], three[1])


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(2)
    db = clustered(rng, 5000, 16)
    qs = [clustered(rng, 20, 16) for _ in range(4)]
    want = [oracle(db, q, 10) for q in qs]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = knn_scan(db, qs[i], 10)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i][0], want[i][0])
        np.testing.assert_array_equal(got[i][1], want[i][1])


def test_bad_input_is_refused():
    db = np.zeros((4, 8), np.uint8)
    with pytest.raises(ValueError, match="bytes"):
        knn_scan(db, np.zeros((1, 4), np.uint8), 1)
    with pytest.raises(ValueError, match="uint8"):
        knn_scan(db.astype(np.int32), np.zeros((1, 8), np.int32), 1)


def test_flat_index_uses_the_kernel_and_orders_ties_by_id():
    """FlatIndex keeps codes in id order, so the kernel's position order is the id order."""
    rng = np.random.default_rng(3)
    codes = clustered(rng, 2500, 8, centres=3, flip=0.02)
    ids = rng.permutation(10**6)[:2500].astype(np.int64)
    index = create_index("flat", bits=64)
    assert index.ranks_ties
    index.add(ids, codes)
    q = clustered(rng, 5, 8, centres=3, flip=0.02)
    d, i = index.search(q, 40)
    dist = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(codes, axis=1)[None, :, :]).sum(
        -1
    )
    for row in range(len(q)):
        order = np.lexsort((ids, dist[row]))[:40]
        np.testing.assert_array_equal(d[row], dist[row][order])
        np.testing.assert_array_equal(i[row], ids[order])


def test_bench_search_smoke_exact_backends_have_full_recall(tmp_path):
    """scripts/bench_search.py runs end to end; the exact scans agree with the numpy truth."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "bench_search.py"),
            "--sizes",
            "3000",
            "--bits",
            "64",
            "--queries",
            "12",
            "--backends",
            "numpy,faiss_bflat,flat,multihash",
            "--skip-goals",
            "--json-out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = json.loads(out.read_text())["rows"]
    recall = {r["backend"]: r["recall@10"] for r in rows}
    assert recall == {"numpy": 1.0, "faiss_bflat": 1.0, "flat": 1.0, "multihash": 1.0}


def test_warm_up_compiles_the_kernel_for_a_code_size():
    hamming_scan.warm_up(7)  # a layout no other test uses: 7 bytes = 7 uint8 words
    assert (7, np.dtype(np.uint8).str) in hamming_scan._kernels
    hamming_scan.warm_up(0)  # nothing to do
