"""Milvus backend against the same brute-force oracle, on milvus-lite and on a real Milvus server.

``lite``: the embedded milvus-lite file database; ``server``: a Milvus 2.3 standalone server
started on loopback by ``tests/milvus_server.py``. Each skips with the reason when its package
is missing (extra ``milvus``).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from indexes import DuplicateIdError, UnknownIdError, create_index, load_index  # noqa: E402
from tests.milvus_server import milvus_server  # noqa: E402,F401 - the session fixture


def hamming(q, db):
    return (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)


@pytest.fixture(scope="module", params=["lite", "server"])
def milvus(request, tmp_path_factory):
    if request.param == "lite":
        pytest.importorskip("milvus_lite")
        uri = str(tmp_path_factory.mktemp("milvus") / "codes.db")
    else:
        uri = request.getfixturevalue("milvus_server").uri
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 256, (15, 4), dtype=np.uint8)
    db = centres[rng.integers(0, 15, 1500)] ^ (rng.random((1500, 4)) < 0.05).astype(np.uint8)
    ids = rng.choice(10**7, 1500, replace=False).astype(np.int64)
    q = db[rng.integers(0, 1500, 12)]
    collection = f"t_{request.param}_{rng.integers(10**9)}"
    index = create_index(f"milvus:{uri}", 32, collection=collection)
    index.add(ids, db)
    yield index, db, ids, q, uri
    index.drop()
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
    index, db, ids, q, _ = milvus
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
        _, again = reopened.search(q, 20)
        np.testing.assert_array_equal(again, index.search(q, 20)[1])
    finally:
        reopened.close()


def test_wrong_code_length_collection_refused(milvus):
    index, _, _, _, uri = milvus
    with pytest.raises(ValueError, match="32-bit|dim"):
        create_index(f"milvus:{uri}", 64, collection=index.collection)


@pytest.mark.slow
def test_server_restart_keeps_acknowledged_codes(request):
    """Codes added before a stop (SIGTERM, then SIGKILL) are all there after a restart."""
    server = request.getfixturevalue("milvus_server")
    rng = np.random.default_rng(11)
    db = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    ids = np.arange(1000, 1300, dtype=np.int64)
    uri = server.uri
    index = create_index(f"milvus:{uri}", 32, collection="restart")
    index.add(ids, db)
    index.close()
    server.stop()
    assert server.start() == uri
    reopened = create_index(f"milvus:{uri}", 32, collection="restart")
    try:
        assert len(reopened) == 300
        dist, got = reopened.search(db[:5], 1)
        assert got[:, 0].tolist() == ids[:5].tolist() and dist[:, 0].tolist() == [0] * 5
    finally:
        reopened.drop()
        reopened.close()
