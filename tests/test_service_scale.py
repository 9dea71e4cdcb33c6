"""The service's costs that must not grow with the collection, checked for their *results*
(timings belong to scripts/bench_scale.py): in-memory filter postings, capped radius searches,
per-request budgets, the store folder lock, and two defects (lone surrogates, id 2^63 - 1).

Oracles: brute force over the codes and metadata the test itself stored, and
``service.filters.matches`` (the filter language's reference semantics)."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexes.hamming_scan import distances
from service import Settings, create_app
from service.catalog import Catalog, StoreInUseError
from service.filters import check_filter, matches
from service.store import MAX_ID
from tests.test_service_support import build_artifacts, image_bytes

BITS = 32
N = 400


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("models"))


def random_meta(rng: np.random.Generator, n: int) -> list[dict]:
    return [
        {"label": int(rng.integers(0, 4)), "tags": sorted({int(t) for t in rng.integers(0, 6, 2)})}
        for _ in range(n)
    ]


def test_postings_follow_adds_deletes_upserts_and_restarts(tmp_path):
    rng = np.random.default_rng(0)
    cat = Catalog(tmp_path, BITS)
    model: dict[int, dict] = {}
    codes = rng.integers(0, 256, (N, BITS // 8), dtype=np.uint8)
    meta = random_meta(rng, N)
    ids = cat.add(codes[:300], metadata=meta[:300])
    model.update(dict(zip(ids, meta[:300], strict=True)))
    for i in rng.choice(ids, 40, replace=False):
        cat.delete(int(i))
        del model[int(i)]
    # a deleted id re-added with other metadata must not match its old terms
    gone = sorted(set(ids) - set(model))[:5]
    cat.add(codes[300:305], ids=gone, metadata=meta[300:305])
    model.update(dict(zip(gone, meta[300:305], strict=True)))
    for i in sorted(model)[:20]:  # metadata replaced
        new = {"label": 9, "tags": [int(i) % 3]}
        cat.upsert(i, None, new)
        model[i] = new
    filters = [{"label": 2}, {"tags": [1, 5]}, {"label": [0, 9], "tags": 3}, {"label": 7}]
    for raw in filters:
        flt = check_filter(raw)
        want = sorted(i for i, m in model.items() if matches(m, flt))
        assert cat.postings.match(flt).tolist() == want

    def check(catalog: Catalog) -> None:
        for raw in filters:
            flt = check_filter(raw)
            want = sorted(i for i, m in model.items() if matches(m, flt))
            assert catalog.postings.match(flt).tolist() == want

    check(cat)
    cat.snapshot()
    # changes after the snapshot, then a crash (the OS drops a dead process's folder lock)
    cat.delete(sorted(model)[-1])
    del model[sorted(model)[-1]]
    first = sorted(model)[0]
    cat.upsert(first, None, {"label": 2, "tags": [5]})
    model[first] = {"label": 2, "tags": [5]}
    new = cat.add(codes[305:310], metadata=meta[305:310])
    model.update(dict(zip(new, meta[305:310], strict=True)))
    cat._folder_lock.release()
    again = Catalog(tmp_path, BITS)
    assert again.recovery == "snapshot+replay"
    check(again)
    again.close()
    again = Catalog(tmp_path, BITS)
    assert again.recovery == "snapshot"
    check(again)
    again.close()
    pointer = json.loads((tmp_path / "index" / "snapshot.json").read_text())
    (tmp_path / "index" / pointer["postings"]).write_bytes(b"not an npz")
    again = Catalog(tmp_path, BITS)  # rebuilt from the items' metadata
    assert again.recovery == "rebuild"
    check(again)
    again.close()


def test_a_second_catalog_on_the_same_folder_is_refused(tmp_path):
    cat = Catalog(tmp_path, BITS)
    with pytest.raises(StoreInUseError, match="in use by another hashkd server"):
        Catalog(tmp_path, BITS)
    cat.close()
    Catalog(tmp_path, BITS).close()  # free again once closed


@pytest.fixture(scope="module")
def loaded(models, tmp_path_factory):
    """A service with N bulk-loaded codes (labels as metadata); small limits to test them."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (N, BITS // 8), dtype=np.uint8)
    codes[50:80] = codes[50]  # a tie group
    labels = np.zeros((N, 3), dtype=np.uint8)
    labels[np.arange(N), rng.integers(0, 3, N)] = 1
    settings = Settings(
        model=models["vit32"],
        store=tmp_path_factory.mktemp("store"),
        max_range_results=25,
        max_search_work=2_000,
        max_request_pixels=2 * 40 * 40,  # two of the 40 x 40 test images
        max_wait_ms=0.5,
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/items/codes",
            files={"codes": ("c.npy", npy(codes)), "labels": ("l.npy", npy(labels))},
        )
        assert r.status_code == 201, r.text
        yield client, codes, labels, np.array(r.json()["ids"])


def brute(codes, ids, q, keep=None):
    dist = distances(codes, q[None, :])[0]
    order = np.lexsort((ids, dist))
    if keep is not None:
        order = order[keep[order]]
    return [(int(ids[o]), int(dist[o])) for o in order]


def hits(response):
    assert response.status_code == 200, response.text
    return [[(h["id"], h["distance"]) for h in row] for row in response.json()["results"]]


def test_radius_search_is_the_capped_exact_prefix(loaded):
    client, codes, _, ids = loaded
    q = codes[50]
    for radius, flt in [(16, None), (32, None), (14, {"labels": 1}), (3, None)]:
        body = {"codes": [q.tobytes().hex()], "radius": radius}
        keep = None
        if flt:
            body["filter"] = flt
            keep = np.array([bool(lab[1]) for lab in loaded[2]])
        r = client.post("/v1/search/codes", json=body)
        want = [h for h in brute(codes, ids, q, keep) if h[1] <= radius]
        assert hits(r)[0] == want[:25]
        assert r.json()["truncated"] == (len(want) > 25)


def test_filtered_knn_pages_match_brute_force(loaded):
    client, codes, labels, ids = loaded
    q = codes[7]
    keep = labels[:, 2] == 1
    want = brute(codes, ids, q, keep)
    got = []
    for offset in (0, 10, 20):
        r = client.post(
            "/v1/search/codes",
            json={"codes": [q.tobytes().hex()], "k": 10, "offset": offset, "filter": {"labels": 2}},
        )
        got += hits(r)[0]
    assert got == want[:30]


def test_a_request_over_the_work_budget_is_refused_with_the_limit_named(loaded):
    client, codes, _, _ = loaded
    many = [c.tobytes().hex() for c in codes[:30]]
    r = client.post("/v1/search/codes", json={"codes": many, "k": 100})  # 30 x 100 > 2000
    assert r.status_code == 422 and "max_search_work = 2000" in r.json()["detail"]
    r = client.post("/v1/search/codes", json={"codes": many[:19], "k": 100})  # 1900: fine
    assert r.status_code == 200
    r = client.post("/v1/search/codes", json={"codes": many, "radius": 3})  # 30 x 26 = 780
    assert r.status_code == 200


def test_decoded_pixels_are_budgeted_per_request(loaded):
    client, *_ = loaded
    files = [("images", (f"{i}.png", image_bytes(i), "image/png")) for i in range(3)]
    r = client.post("/v1/search/batch", files=files)
    assert r.status_code == 413 and "max_request_pixels" in r.json()["detail"]
    r = client.post("/v1/search/batch", files=files[:2])
    assert r.status_code == 200


@pytest.mark.parametrize("where", ["filter", "metadata"])
def test_a_lone_surrogate_answers_422(loaded, where):
    client, codes, _, _ = loaded
    raw = '{"a": "\\ud800"}'
    if where == "filter":
        r = client.post(
            "/v1/search/codes",
            content=f'{{"codes": ["{codes[0].tobytes().hex()}"], "filter": {raw}}}',
            headers={"content-type": "application/json"},
        )
        r2 = client.post(
            "/v1/search",
            files=[("image", ("a.png", image_bytes(1), "image/png"))],
            params={"filter": raw},
        )
        assert r2.status_code == 422 and "lone surrogate" in r2.json()["detail"], r2.text
    else:
        r = client.post(
            "/v1/items/codes",
            files={"codes": ("c.npy", npy(codes[:1])), "metadata": ("m.json", f"[{raw}]".encode())},
        )
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"], r.text
    assert client.get("/v1/info").status_code == 200  # still serving


def test_an_item_at_the_largest_id_makes_auto_ids_409_not_500(models, tmp_path):
    settings = Settings(model=models["vit32"], store=tmp_path / "s", max_wait_ms=0.5)
    code = np.zeros((1, BITS // 8), dtype=np.uint8)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/items/codes",
            files={"codes": ("c.npy", npy(code)), "ids": ("i.npy", npy(np.array([MAX_ID])))},
        )
        assert r.status_code == 201, r.text
        for _ in range(2):
            r = client.post("/v1/items/codes", files={"codes": ("c.npy", npy(code))})
            assert r.status_code == 409 and "run out of ids" in r.json()["detail"], r.text
        r = client.post(
            "/v1/items/codes",
            files={"codes": ("c.npy", npy(code)), "ids": ("i.npy", npy(np.array([5])))},
        )
        assert r.status_code == 201 and r.json()["ids"] == [5]
        assert client.get(f"/v1/items/{MAX_ID}").status_code == 200
        assert json.loads(client.get("/v1/info").text)["items"] == 2


def test_a_schema_1_store_is_migrated_in_place(tmp_path):
    """Schema 1 kept thumbnails inline in ``items`` and had no count: opening it moves them."""
    import sqlite3

    from service.store import ItemStore

    conn = sqlite3.connect(tmp_path / "items.sqlite")
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (id INTEGER PRIMARY KEY, code BLOB NOT NULL,
                            metadata TEXT NOT NULL DEFAULT '{}', thumbnail BLOB);
        CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                              op TEXT NOT NULL CHECK (op IN ('add', 'delete')), id INTEGER NOT NULL);
        CREATE TABLE terms (key TEXT NOT NULL, term TEXT NOT NULL, id INTEGER NOT NULL,
                            PRIMARY KEY (key, term, id)) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema_version', '1'), ('bits', '32'), ('next_id', '3'),
                                ('terms', '1');
        INSERT INTO items VALUES (0, x'01020304', '{"a":1}', x'ffd8ff'),
                                 (2, x'05060708', '{}', NULL);
        INSERT INTO changes (op, id) VALUES ('add', 0), ('add', 2);
        INSERT INTO terms VALUES ('a', '1', 0);
        """
    )
    conn.commit()
    conn.close()
    store = ItemStore(tmp_path / "items.sqlite", 32)
    assert store.count() == 2
    assert store.get(0).has_thumbnail and store.thumbnail(0) == b"\xff\xd8\xff"
    assert not store.get(2).has_thumbnail and store.thumbnail(2) is None
    assert store.get(0).metadata == {"a": 1} and store.get(2).code == bytes([5, 6, 7, 8])
    touched, _ = store.changed_since(0)
    assert touched.tolist() == [0, 2]
    ids, _ = store.add(np.zeros((3, 4), np.uint8))  # a run of ids is one change row
    assert ids == [3, 4, 5] and store.count() == 5
    assert store.changed_since(2)[0].tolist() == [3, 4, 5]
    store.delete(0)
    assert store.count() == 4 and store.changed_since(3)[0].tolist() == [0]
    store.close()


def _row_sum_then(calls: list[int], key: object, fail_batched: bool = False):
    """A batched ``then`` whose result per request is each code's byte sum."""
    from service.batching import BatchedThen

    class RowSums(BatchedThen):
        def run_many(self, codes):
            calls.append(len(codes))
            if fail_batched and len(codes) > 1:
                raise RuntimeError("batched call failed")
            return [c.astype(int).sum(axis=1).tolist() for c in codes]

    then = RowSums()
    then.key = key
    return then


@pytest.mark.parametrize("fail_batched", [False, True])
def test_the_batcher_finishes_requests_of_one_key_with_one_call(fail_batched):
    from service.batching import MicroBatcher

    gate = threading.Event()

    def encode(images):
        gate.wait(timeout=30)  # the first batch holds the worker until every request is queued
        return np.array([[v, v + 1] for v in images], dtype=np.uint8)

    batcher = MicroBatcher(encode, max_batch=64, max_wait=0.0)
    calls: list[int] = []
    first = batcher.submit([0])
    futures = [
        batcher.submit([v, v + 10], then=_row_sum_then(calls, "k10", fail_batched))
        for v in range(1, 6)
    ]
    other = batcher.submit([7], then=_row_sum_then(calls, "k20", fail_batched))
    gate.set()
    first.result(timeout=30)
    for v, fut in zip(range(1, 6), futures, strict=True):
        assert fut.result(timeout=30) == [2 * v + 1, 2 * (v + 10) + 1]
    assert other.result(timeout=30) == [15]
    batcher.close()
    if fail_batched:  # one failed batched call, then each request alone
        assert sorted(calls) == [1, 1, 1, 1, 1, 1, 5]
    else:  # the five k10 requests in one call, the k20 one alone
        assert sorted(calls) == [1, 5]


def test_a_large_upload_is_added_in_chunks_and_a_taken_id_adds_nothing(
    models, tmp_path, monkeypatch
):
    from service.engine import Engine

    monkeypatch.setattr(Engine, "IMPORT_CHUNK", 7)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (30, BITS // 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 30)
    ids = np.arange(100, 130)
    settings = Settings(model=models["vit32"], store=tmp_path / "s", max_wait_ms=0.5)
    with TestClient(create_app(settings)) as client:
        files = {
            "codes": ("c.npy", npy(codes)),
            "ids": ("i.npy", npy(ids)),
            "labels": ("l.npy", npy(labels)),
        }
        r = client.post("/v1/items/codes", files=files)
        assert r.status_code == 201 and r.json()["ids"] == ids.tolist()
        for i in (100, 113, 129):
            item = client.get(f"/v1/items/{i}").json()
            assert item["metadata"] == {"labels": [int(labels[i - 100])]}
            assert bytes.fromhex(item["code"]) == codes[i - 100].tobytes()
        # a later chunk holds a taken id: refused before the first chunk is added
        clash = np.concatenate([np.arange(200, 220), [129]])
        r = client.post(
            "/v1/items/codes",
            files={"codes": ("c.npy", npy(codes[:21])), "ids": ("i.npy", npy(clash))},
        )
        assert r.status_code == 409 and "129" in r.json()["detail"]
        assert client.get("/v1/info").json()["items"] == 30
        assert client.get("/v1/items/200").status_code == 404


def test_fast_json_paths_keep_every_value():
    """Bulk metadata goes through orjson; what it would change or refuse goes through Python's
    json with the same results as before (integers past 64 bits, NaN, lone surrogates)."""
    from service.errors import ApiError
    from service.jsonlimits import loads_bounded
    from service.store import _dumps

    big = 10**30
    text = (
        f'[{{"n": {big}, "m": -12, "f": 1.5e16, "s": "caf\\u00e9 \\ud83d\\ude00", "l": [1, null]}}]'
    )
    value = loads_bounded(text, "metadata", 10_000)
    assert value == [{"n": big, "m": -12, "f": 1.5e16, "s": "café 😀", "l": [1, None]}]
    assert json.loads(_dumps(value[0])) == value[0]  # big integers kept through the store too
    for bad in ('[{"x": NaN}]', '[{"s": "\\ud800"}]', "[1,", b'[{"s": "\xff"}]'):
        with pytest.raises(ApiError) as err:
            loads_bounded(bad, "metadata", 10_000)
        assert err.value.status_code == 422


def test_bulk_term_lists_equal_the_reference_terms():
    from service.terms import metadata_term_lists, metadata_terms

    rng = np.random.default_rng(4)
    metas = random_meta(rng, 50) + [
        {"a": [1, 1, 2.0, "1", True, None, {"x": 1}], "b": 1.5, "c": float("nan"), "d": "x"},
        {"labels": []},
        {},
    ]
    assert metadata_term_lists(metas) == [list(metadata_terms(m)) for m in metas]


def test_freed_memory_can_be_given_back():
    import platform

    from service.memory import release_free_memory

    assert release_free_memory() == (platform.libc_ver()[0] == "glibc")


def test_deletes_leave_the_posting_lists_in_batches(monkeypatch, tmp_path):
    """A delete is O(1) in the lists; matches never include it; a purge (by count, or before a
    save) removes it; a deleted id added again does not match its old terms."""
    from service.postings import Postings

    monkeypatch.setattr(Postings, "STALE_SLACK", 3)
    postings = Postings()
    metas = [{"c": i % 2, "p": f"f{i}"} for i in range(20)]
    postings.add_items(list(range(20)), metas)
    for i in (2, 4):
        postings.delete_item(i, metas[i])
    assert len(postings._stale) == 2 and 2 in postings._lists[("c", "0")].ids()  # not yet purged
    assert postings.match({"c": ["0"]}).tolist() == [0, 6, 8, 10, 12, 14, 16, 18]
    postings.add_items([4], [{"c": 1}])  # re-added with other metadata
    assert 4 in postings.match({"c": ["1"]}).tolist() and 4 not in postings.match({"c": ["0"]})
    for i in range(5, 16):  # past max(STALE_SLACK, a quarter of the 41 entries): a purge
        postings.delete_item(i, metas[i])
    assert 0 < len(postings._stale) < 12
    raw = postings._lists[("c", "0")].ids().tolist()
    assert not {2, 6, 8, 10} & set(raw)  # purged from the list itself
    assert postings.match({"p": ['"f6"']}).tolist() == []
    assert postings.match({"c": ["0"]}).tolist() == [0, 16, 18]
    postings.save(tmp_path / "p.npz")  # a save purges first: the file lists no deleted item
    assert not postings._stale
    again = Postings.load(tmp_path / "p.npz")
    assert again._lists[("c", "0")].ids().tolist() == [0, 16, 18]
    assert again.match({"c": ["1"]}).tolist() == [1, 3, 4, 17, 19]


def test_serve_on_a_store_in_use_is_one_sentence(models, tmp_path, capsys):
    from hashkd.cli import main

    cat = Catalog(tmp_path / "store", 32)
    try:
        code = main(["serve", "--model", str(models["vit32"]), "--store", str(tmp_path / "store")])
    finally:
        cat.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is in use by another hashkd server" in err[0]
