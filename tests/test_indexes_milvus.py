"""Milvus backend (milvus-lite, local file) against the same brute-force oracle.

Skips cleanly when pymilvus / milvus-lite are not installed (extra ``milvus``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from indexes import DuplicateIdError, UnknownIdError, create_index, load_index  # noqa: E402


def hamming(q, db):
    return (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 256, (15, 4), dtype=np.uint8)
    db = centres[rng.integers(0, 15, 1500)] ^ (rng.random((1500, 4)) < 0.05).astype(np.uint8)
    ids = rng.choice(10**7, 1500, replace=False).astype(np.int64)
    q = db[rng.integers(0, 1500, 12)]
    path = tmp_path_factory.mktemp("milvus") / "codes.db"
    index = create_index(f"milvus:{path}", 32, collection="t1")
    index.add(ids, db)
    yield index, db, ids, q, path
    index.close()


def test_knn_equals_oracle_with_ties(milvus):
    index, db, ids, q, _ = milvus
    assert len(index) == len(db) and index.exact
    dist, got = index.search(q, 10)
    truth = hamming(q, db)
    for r in range(len(q)):
        order = np.lexsort((ids, truth[r]))[:10]
        assert got[r].tolist() == ids[order].tolist()
        assert dist[r].tolist() == truth[r][order].tolist()


def test_range_search_inclusive_equals_oracle(milvus):
    index, db, ids, q, _ = milvus
    truth = hamming(q, db)
    for radius in (0, 2, 4):
        for r, (d, i) in enumerate(index.range_search(q, radius)):
            want = {int(x): int(y) for x, y in zip(ids, truth[r], strict=True) if y <= radius}
            assert dict(zip(i.tolist(), d.tolist(), strict=True)) == want


def test_ids_remove_replace_get_and_reload(milvus, tmp_path):
    index, db, ids, q, path = milvus
    np.testing.assert_array_equal(index.get(ids[:5]), db[:5])
    with pytest.raises(DuplicateIdError):
        index.add(ids[:1], db[1:2])
    with pytest.raises(UnknownIdError):
        index.remove([ids[0], 123])
    assert ids[0] in index
    assert index.remove(ids[:100]) == 100
    _, got = index.search(q, 20)
    assert not np.isin(got, ids[:100]).any()
    index.upsert(ids[100:101], db[0:1])
    np.testing.assert_array_equal(index.get(ids[100:101]), db[0:1])
    index.save(tmp_path / "m.idx")
    reopened = load_index(tmp_path / "m.idx", bits=32)
    try:
        assert len(reopened) == 1400 and ids[0] not in reopened and ids[200] in reopened
        np.testing.assert_array_equal(reopened.get(ids[200:203]), db[200:203])
    finally:
        reopened.close()


def test_wrong_code_length_collection_refused(milvus):
    _, _, _, _, path = milvus
    with pytest.raises(ValueError, match="32-bit|dim"):
        create_index(f"milvus:{path}", 64, collection="t1")
