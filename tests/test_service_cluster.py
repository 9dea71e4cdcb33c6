"""Cluster mode (``hashkd serve --cluster``): items in one Milvus collection shared by replicas.

Fast tests run one in-process service on milvus-lite (the embedded Milvus file database,
the same pymilvus calls) against brute-force oracles, with tie-heavy codes so that the tie
completion of the (distance, id) order is exercised. The ``slow`` tests start a real Milvus
2.3 standalone server (``tests/milvus_server.py``) and several ``python -m service --cluster``
replicas as subprocesses: add via A / search via B, delete via B / gone from A, unique ids
under concurrent adds, ``kill -9`` of a replica during adds, Milvus stopped and restarted.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("pymilvus")

from fastapi.testclient import TestClient  # noqa: E402

from service import Settings, create_app  # noqa: E402
from service.cluster_catalog import ClusterCatalog  # noqa: E402
from service.filters import check_filter, matches  # noqa: E402
from tests.milvus_server import milvus_server  # noqa: E402,F401 - the session fixture
from tests.test_service_support import (  # noqa: E402
    build_artifact,
    hamming,
    image_bytes,
    start_server,
    stop_server,
)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _oracle(q: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> list[tuple[int, int]]:
    """(id, distance) of every code, nearest first, ties by ascending id (brute force)."""
    dist = hamming(q, codes)[0]
    return [(int(ids[j]), int(dist[j])) for j in np.lexsort((ids, dist))]


def _hits(row: list[dict]) -> list[tuple[int, int]]:
    return [(h["id"], h["distance"]) for h in row]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import TINY_VIT

    return build_artifact(tmp_path_factory.mktemp("models") / "vit32", TINY_VIT, 32, 0)


# -- one in-process replica on milvus-lite -----------------------------------------------------
@pytest.fixture(scope="module")
def lite(model, tmp_path_factory):
    """A cluster-mode service on milvus-lite holding 400 tie-heavy codes with metadata."""
    pytest.importorskip("milvus_lite")
    uri = str(tmp_path_factory.mktemp("lite") / "items.db")
    settings = Settings(model=model, cluster=True, index_spec=f"milvus:{uri}", max_wait_ms=1.0)
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    flips = np.packbits(rng.random((400, 32)) < 0.01, axis=1)
    codes = centres[rng.integers(0, 3, 400)] ^ flips  # few distinct codes: large tie groups
    meta = [{"label": f"c{i % 3}", "n": i, "tags": [i % 2, "x"]} for i in range(400)]
    # Ids in no particular order: a backend that scans in insertion order must not happen to
    # cut tie groups by ascending id.
    ids = rng.choice(10**6, 400, replace=False).astype(np.int64)
    with TestClient(create_app(settings)) as client:
        files = {
            "codes": ("c.npy", _npy(codes)),
            "ids": ("i.npy", _npy(ids)),
            "metadata": ("m.json", json.dumps(meta)),
        }
        r = client.post("/v1/items/codes", files=files)
        assert r.status_code == 201 and r.json()["ids"] == ids.tolist(), r.text
        yield client, ids, codes, meta


def test_new_ids_are_distinct_unused_javascript_safe_integers(lite):
    client, ids, codes, _ = lite
    r = client.post("/v1/items/codes", files={"codes": ("c.npy", _npy(codes[:300]))})
    new = r.json()["ids"]
    assert len(set(new)) == 300 and not set(new) & set(ids.tolist())
    assert min(new) >= 0 and max(new) < 2**53
    assert client.get(f"/v1/items/{new[5]}").json()["code"] == codes[5].tobytes().hex()
    for i in new:
        assert client.delete(f"/v1/items/{i}").status_code == 200


def test_knn_pages_and_radius_equal_the_oracle(lite, monkeypatch):
    client, ids, codes, _ = lite
    completions = []
    complete = ClusterCatalog._complete
    monkeypatch.setattr(
        ClusterCatalog,
        "_complete",
        lambda self, *a: completions.append(a[1][-1][0]) or complete(self, *a),
    )
    queries = np.concatenate([codes[:3], np.random.default_rng(9).integers(0, 256, (2, 4))])
    hexes = [q.astype(np.uint8).tobytes().hex() for q in queries]
    for k, offset in ((10, 0), (25, 50), (100, 0)):
        r = client.post("/v1/search/codes", json={"codes": hexes, "k": k, "offset": offset})
        assert r.status_code == 200, r.text
        for q, row in zip(queries, r.json()["results"], strict=True):
            truth = _oracle(q[None, :].astype(np.uint8), ids, codes)
            assert _hits(row) == truth[offset : offset + k]
    r = client.post("/v1/search/codes", json={"codes": hexes, "radius": 3})
    for q, row in zip(queries, r.json()["results"], strict=True):
        truth = [p for p in _oracle(q[None, :].astype(np.uint8), ids, codes) if p[1] <= 3]
        assert _hits(row) == truth
    assert completions, "no query ended on a cut tie group: the tie completion went untested"


def test_filters_and_similar_equal_the_oracle(lite):
    client, ids, codes, meta = lite
    flt = {"label": ["c1", "c2"], "tags": 1}
    keep = np.array([matches(m, check_filter(flt)) for m in meta])  # the reference semantics
    assert 0 < keep.sum() < len(meta)
    r = client.post(
        "/v1/search/codes", json={"codes": codes[5].tobytes().hex(), "k": 30, "filter": flt}
    )
    truth = _oracle(codes[5:6], ids[keep], codes[keep])[:30]
    assert _hits(r.json()["results"][0]) == truth
    by_id = dict(zip(ids.tolist(), meta, strict=True))
    assert all(h["metadata"] == by_id[h["id"]] for h in r.json()["results"][0])
    r = client.get(f"/v1/items/{ids[7]}/similar", params={"k": 12})
    others = ids != ids[7]
    assert _hits(r.json()["results"]) == _oracle(codes[7:8], ids[others], codes[others])[:12]


def test_list_pages_concatenate_to_every_id_ascending(lite):
    client, ids, _, _ = lite
    seen, after = [], -1
    while after is not None:
        page = client.get("/v1/items", params={"after": after, "limit": 64}).json()
        seen += [item["id"] for item in page["items"]]
        after = page["next_after"]
    assert seen == sorted(ids.tolist())


def test_items_add_put_delete_and_limits(lite):
    client, ids, codes, _ = lite
    r = client.post(
        "/v1/items",
        files=[("images", ("a.png", image_bytes(1), "image/png"))],
        data={"ids": "77", "metadata": '[{"label": "img"}]'},
    )
    assert r.status_code == 201 and r.json()["ids"] == [77]
    # Without --thumbnail-store, cluster mode keeps no thumbnails (none in Milvus either).
    assert client.get("/v1/items/77").json()["has_thumbnail"] is False
    assert client.get("/v1/items/77/thumbnail").status_code == 404
    dup = client.post(
        "/v1/items", files=[("images", ("a.png", image_bytes(2), "image/png"))], data={"ids": "77"}
    )
    assert dup.status_code == 409 and "77" in dup.json()["detail"]
    code_before = client.get("/v1/items/77").json()["code"]
    r = client.put("/v1/items/77", data={"metadata": '{"label": "renamed"}'})
    assert (r.json()["id"], r.json()["created"]) == (77, False)
    item = client.get("/v1/items/77").json()
    assert item["metadata"] == {"label": "renamed"} and item["code"] == code_before
    r = client.put("/v1/items/78", files={"image": ("b.png", image_bytes(3), "image/png")})
    assert (r.json()["id"], r.json()["created"]) == (78, True)
    assert client.put("/v1/items/79", data={"metadata": "{}"}).status_code == 404
    big = json.dumps([{"text": "x" * 70_000}])
    files = {"codes": ("c.npy", _npy(codes[:1])), "metadata": ("m.json", big)}
    r = client.post("/v1/items/codes", files=files)
    assert r.status_code == 422 and "65536" in r.json()["detail"], r.text
    for i in (77, 78):
        assert client.delete(f"/v1/items/{i}").status_code == 200
        assert client.get(f"/v1/items/{i}").status_code == 404
        assert client.delete(f"/v1/items/{i}").status_code == 404
    info = client.get("/v1/info").json()
    assert info["items"] == info["index"]["size"] == len(ids)
    assert info["index"]["mode"] == "cluster" and info["index"]["consistency"] == "Bounded"
    assert info["index"]["thumbnails"] == "none"


def test_data_milvus_refuses_is_422_not_503(lite):
    """Bad data is a 422 naming it: an integer JSON cannot hold (pymilvus refuses it before
    sending) and a lone surrogate (not UTF-8); nothing of the request is stored."""
    client, ids, codes, _ = lite
    for meta in ('[{"n": 1000000000000000000000000000000}]', '[{"s": "\\ud800"}]'):
        files = {"codes": ("c.npy", _npy(codes[:1])), "ids": ("i.npy", _npy(np.array([91])))}
        files["metadata"] = ("m.json", meta)
        r = client.post("/v1/items/codes", files=files)
        assert r.status_code == 422, r.text
        assert client.get("/v1/items/91").status_code == 404


def test_pymilvus_errors_are_mapped_by_kind():
    import grpc
    from pymilvus import exceptions as mx

    from service.milvus_items import (
        ClusterDataError,
        ClusterUnavailableError,
        MilvusItems,
        error_kind,
    )

    cases = [
        (mx.DataNotMatchException(message="field should be a json"), "data"),
        (mx.ParamError(message="invalid param"), "data"),
        (mx.MilvusException(1100, "the length of json field exceeds max length", 5), "data"),
        (mx.MilvusException(65535, "illegal argument", 5), "data"),
        (mx.MilvusException(101, "failed to query: collection not loaded", 1), "reopen"),
        (mx.MilvusException(100, "collection not found", 4), "reopen"),
        (mx.MilvusException(8, "rate limit exceeded", 49), "unavailable"),
        (mx.MilvusException(1, "service not ready", 1), "unavailable"),
        (mx.MilvusException(65535, "internal error", 1), "unavailable"),
    ]
    for exc, kind in cases:
        assert error_kind(exc) == kind, exc

    class Down(grpc.RpcError):
        def details(self) -> str:
            return "failed to connect to all addresses"

    items = MilvusItems("http://milvus.invalid:19530", "c", 32)
    items._opened, items._client = True, object()  # no connection: the operations raise

    def raising(exc):
        def op(client):
            raise exc

        return op

    with pytest.raises(ClusterDataError, match="Milvus refused the write: field should be"):
        items.call("write", raising(cases[0][0]))
    with pytest.raises(ClusterUnavailableError, match="did not complete the search: failed"):
        items.call("search", raising(Down()))
    items._opened = True
    with pytest.raises(ClusterUnavailableError, match="rate limit"):
        items.call("search", raising(cases[6][0]))


def test_adds_without_ids_read_nothing_and_leased_ids_are_reserved(lite, monkeypatch):
    """New ids come from a block leased by this replica: after the lease, an add makes no Milvus
    read (only its write); an explicit id inside a leased block is refused with 409."""
    from service.milvus_ids import BLOCK_BITS
    from service.milvus_items import MilvusItems

    client, ids, codes, _ = lite
    first = client.post("/v1/items/codes", files={"codes": ("c.npy", _npy(codes[:3]))}).json()
    reads, writes = [], []
    for name in ("rows", "select", "search", "count"):
        original = getattr(MilvusItems, name)
        monkeypatch.setattr(
            MilvusItems,
            name,
            lambda self, *a, _o=original, _n=name, **kw: reads.append(_n) or _o(self, *a, **kw),
        )
    upsert = MilvusItems.upsert
    monkeypatch.setattr(
        MilvusItems, "upsert", lambda self, *a, **kw: writes.append(1) or upsert(self, *a, **kw)
    )
    second = client.post("/v1/items/codes", files={"codes": ("c.npy", _npy(codes[:5]))}).json()
    assert reads == [] and len(writes) == 1
    new = first["ids"] + second["ids"]
    assert new == list(range(new[0], new[0] + 8))  # consecutive ids of one block
    monkeypatch.undo()
    block = new[0] >> BLOCK_BITS
    assert client.app.state.engine.catalog.ids.leased([block, block + 1]) == {block}
    reserved = new[-1] + 100  # in the leased block, not handed out yet
    files = {"codes": ("c.npy", _npy(codes[:1])), "ids": ("i.npy", _npy(np.array([reserved])))}
    r = client.post("/v1/items/codes", files=files)
    assert r.status_code == 409 and "reserved" in r.json()["detail"], r.text
    r = client.put(f"/v1/items/{reserved}", files={"image": ("b.png", image_bytes(3), "image/png")})
    assert r.status_code == 409 and "reserved" in r.json()["detail"], r.text
    assert client.get(f"/v1/items/{reserved}").status_code == 404
    for i in new:
        assert client.delete(f"/v1/items/{i}").status_code == 200


def _now_token() -> str:
    """A valid token naming this moment (Milvus hybrid timestamp: milliseconds << 18)."""
    return str(int(time.time() * 1000) << 18)


def test_reads_are_served_at_the_token_they_pass(lite, monkeypatch):
    """A read passing a token back (header or query parameter, on every read path: the worker
    threads and the micro-batcher see the request's context) runs with that guarantee
    timestamp; without one, Bounded; a malformed or future token is a 422. (milvus-lite has no
    write timestamps, so its writes answer no token: the real server's test checks them.)"""
    from service.consistency import TOKEN_HEADER, current
    from service.milvus_items import MilvusItems

    client, ids, codes, _ = lite
    r = client.post("/v1/items/codes", files={"codes": ("c.npy", _npy(codes[:1]))})
    assert r.json().get("consistency_token") == r.headers.get(TOKEN_HEADER)  # None on lite
    new_id = r.json()["ids"][0]
    token = _now_token()
    seen: list[dict] = []
    for name in ("search", "rows", "select", "count"):
        original = getattr(MilvusItems, name)

        def spy(self, *a, _o=original, **kw):
            if not kw.get("strong"):
                seen.append(current().read_options())
            return _o(self, *a, **kw)

        monkeypatch.setattr(MilvusItems, name, spy)
    at_token = {"consistency_level": "Customized", "guarantee_timestamp": int(token)}
    hexcode = codes[0].tobytes().hex()
    image = {"image": ("a.png", image_bytes(4), "image/png")}
    by_header, by_param = (
        {"headers": {TOKEN_HEADER: token}},
        {"params": {"consistency_token": token}},
    )
    requests = [
        ("POST", "/v1/search/codes", {"json": {"codes": hexcode}, **by_header}),
        ("POST", "/v1/search/codes", {"json": {"codes": hexcode}, **by_param}),
        ("POST", "/v1/search", {"files": image, **by_header}),
        ("GET", f"/v1/items/{new_id}/similar", by_header),
        ("GET", f"/v1/items/{new_id}", by_header),
        ("GET", f"/v1/items/{new_id}/thumbnail", by_param),
        ("GET", "/v1/items", by_param),
        ("GET", "/v1/info", by_header),
    ]
    for method, path, kwargs in requests:
        seen.clear()
        r = client.request(method, path, **kwargs)
        assert r.status_code in (200, 404), (path, r.text)  # 404: a code has no thumbnail
        assert seen and all(o == at_token for o in seen), (path, seen)
    seen.clear()
    assert client.post("/v1/search/codes", json={"codes": hexcode}).status_code == 200
    assert seen and all(o == {"consistency_level": "Bounded"} for o in seen)
    monkeypatch.undo()
    future = str(int((time.time() + 3600) * 1000) << 18)
    for bad in ("abc", "-5", "0", "12 3", "9" * 30, future):
        r = client.get(f"/v1/items/{new_id}", headers={TOKEN_HEADER: bad})
        assert r.status_code == 422 and "consistency token" in r.json()["detail"], (bad, r.text)
    assert client.delete(f"/v1/items/{new_id}").status_code == 200


def test_client_sends_the_newest_token_it_received():
    from hashkd.client import TOKEN_HEADER, Client

    sent: list[str | None] = []
    answers = iter(["500", "400", None, "600"])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get(TOKEN_HEADER))
        token = next(answers)
        headers = {TOKEN_HEADER: token} if token else {}
        return httpx.Response(200, json={"id": 1, "deleted": True}, headers=headers)

    with Client("http://replica-a", transport=httpx.MockTransport(handler)) as client:
        for _ in range(4):
            client.delete(1)
        assert client.consistency_token == "600"
    assert sent == [None, "500", "500", "500"]
    sent.clear()
    answers = iter([None])
    with Client("http://b", transport=httpx.MockTransport(handler), consistency_token="600") as b:
        b.delete(1)
    assert sent == ["600"]


def test_strong_setting_reads_strong(model, tmp_path, monkeypatch):
    from service.consistency import current
    from service.milvus_items import MilvusItems

    pytest.importorskip("milvus_lite")
    settings = Settings(
        model=model,
        cluster=True,
        index_spec=f"milvus:{tmp_path / 'strong.db'}",
        consistency="strong",
        max_wait_ms=1.0,
    )
    seen = []
    original = MilvusItems.search
    monkeypatch.setattr(
        MilvusItems,
        "search",
        lambda self, *a, **kw: seen.append(current().read_options()) or original(self, *a, **kw),
    )
    with TestClient(create_app(settings)) as client:
        codes = np.arange(8, dtype=np.uint8).reshape(2, 4)
        assert client.post("/v1/items/codes", files={"codes": ("c.npy", _npy(codes))}).is_success
        for headers in ({}, {"X-Consistency-Token": _now_token()}):
            seen.clear()
            r = client.post(
                "/v1/search/codes", json={"codes": codes[1].tobytes().hex()}, headers=headers
            )
            assert r.json()["results"][0][0]["distance"] == 0
            assert seen == [{"consistency_level": "Strong"}]
        assert client.get("/v1/info").json()["index"]["consistency"] == "Strong"


def test_tie_groups_and_radius_beyond_one_milvus_answer(lite, monkeypatch):
    """With Milvus's hits per answer cut to 40, tie groups of ~130 items, pages, radius answers,
    filtered pages without the query item, and listings of 400 items are still exact: paged
    by id windows, continued by range searches."""
    import service.cluster_catalog as cc

    client, ids, codes, meta = lite
    monkeypatch.setattr(cc, "MAX_HITS", 40)
    catalog = client.app.state.engine.catalog
    queries = np.concatenate([codes[:2], np.random.default_rng(11).integers(0, 256, (1, 4))])
    queries = queries.astype(np.uint8)
    for k, offset in ((10, 0), (60, 100), (300, 50)):
        found, _ = catalog.search(queries, k, None, offset=offset)
        for q, row in zip(queries, found, strict=True):
            assert _hits(row) == _oracle(q[None, :], ids, codes)[offset : offset + k]
    found, truncated = catalog.search(queries, 10, 32)
    assert not truncated
    for q, row in zip(queries, found, strict=True):
        assert _hits(row) == _oracle(q[None, :], ids, codes)  # every item: radius = bits
    found, truncated = catalog.search(queries, 10, 5, max_range_results=100)
    assert truncated
    for q, row in zip(queries, found, strict=True):
        assert _hits(row) == [p for p in _oracle(q[None, :], ids, codes) if p[1] <= 5][:100]
    flt = check_filter({"label": ["c0", "c2"]})
    keep = np.array([matches(m, flt) for m in meta])
    found, _ = catalog.search(queries, 120, None, flt=flt, offset=30, exclude=int(ids[0]))
    keep &= ids != ids[0]
    for q, row in zip(queries, found, strict=True):
        assert _hits(row) == _oracle(q[None, :], ids[keep], codes[keep])[30:150]
    listed = [item.id for item in catalog.list_items(-1, 1000)]
    assert listed == sorted(ids.tolist())
    assert [item.id for item in catalog.list_items(int(ids.min()), 70)] == sorted(ids)[1:71]


def test_thumbnails_live_in_the_shared_store_not_in_milvus(tmp_path):
    """The row keeps a version number; the JPEG is a file of the store: written before the row,
    replaced by a PUT with an image (an older version survives STALE_S, then goes), kept by a
    metadata PUT, removed with the item."""
    pytest.importorskip("milvus_lite")
    from service.thumbnail_store import STALE_S

    store = tmp_path / "thumbs"
    catalog = ClusterCatalog(str(tmp_path / "t.db"), 32, collection="t", thumbnail_store=store)
    try:
        fields = catalog.items.call("describe", lambda c: c.describe_collection("t")["fields"])
        assert {f["name"]: int(f["type"]) for f in fields}["thumb"] == 5  # DataType.INT64
        assert "thumbnail" not in {f["name"] for f in fields}
        codes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.uint8)
        jpeg_a, jpeg_b = b"\xff\xd8 first", b"\xff\xd8 second"
        a, b = catalog.add(codes, thumbnails=[jpeg_a, None])
        assert catalog.get(a).has_thumbnail and not catalog.get(b).has_thumbnail
        assert catalog.thumbnail(a) == jpeg_a and catalog.thumbnail(b) is None
        assert len(catalog.thumbs.versions(a)) == 1 and catalog.thumbs.versions(b) == {}
        assert catalog.upsert(a, codes[1], None, jpeg_b) is False
        assert catalog.thumbnail(a) == jpeg_b
        versions = catalog.thumbs.versions(a)
        assert len(versions) == 2  # the older one is younger than STALE_S: kept for now
        current_version = int(catalog.items.rows([a], ["thumb"])[0]["thumb"])
        old = next(v for v in versions if v != current_version)
        past = time.time() - STALE_S - 1
        os.utime(catalog.thumbs.path(a, old), (past, past))
        catalog.upsert(a, None, {"label": "kept"})  # metadata only: same thumbnail
        assert catalog.thumbnail(a) == jpeg_b and catalog.get(a).metadata == {"label": "kept"}
        catalog.upsert(a, codes[0], None, jpeg_a)
        assert catalog.thumbnail(a) == jpeg_a
        assert old not in catalog.thumbs.versions(a) and len(catalog.thumbs.versions(a)) == 2
        catalog.delete(a)
        assert catalog.thumbs.versions(a) == {}
    finally:
        catalog.close()


def test_cluster_settings_need_a_milvus_spec_and_embedded_needs_a_store(model):
    from service.cli import settings_from_args

    class Args:
        pass

    args = Args()
    args.model, args.cluster, args.index_spec = str(model), True, "flat"
    with pytest.raises(ValueError, match="--cluster needs --index-spec milvus:URI"):
        settings_from_args(args)
    args.cluster, args.index_spec = None, None
    with pytest.raises(ValueError, match="store is required"):
        settings_from_args(args)


def test_consistency_and_thumbnail_store_flags(model, tmp_path):
    import argparse

    from service.cli import register, settings_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    spec = "milvus:http://127.0.0.1:19530"
    args = parser.parse_args(["serve", "--model", str(model), "--cluster", "--index-spec", spec])
    assert settings_from_args(args).consistency == "bounded"
    extra = ["--consistency", "strong", "--thumbnail-store", str(tmp_path)]
    args = parser.parse_args(
        ["serve", "--model", str(model), "--cluster", "--index-spec", spec, *extra]
    )
    settings = settings_from_args(args)
    assert settings.consistency == "strong" and settings.thumbnail_store == tmp_path
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--consistency", "eventually"])
    args = parser.parse_args(
        ["serve", "--model", str(model), "--store", str(tmp_path), "--thumbnail-store", "x"]
    )
    with pytest.raises(ValueError, match="--thumbnail-store 'x' is for cluster mode"):
        settings_from_args(args)


# -- several replicas over a real Milvus server --------------------------------------------------
def _replica(
    model: Path, uri: str, collection: str, log: Path, *extra: str
) -> tuple[httpx.Client, object]:
    from tests.test_service_support import free_port

    port = free_port()
    args = ["--model", str(model), "--cluster", "--index-spec", f"milvus:{uri}"]
    args += [
        "--collection",
        collection,
        "--max-wait-seconds",
        "0.001",
        "--milvus-timeout-seconds",
        "5",
        *extra,
    ]
    proc = start_server(args, port, log)
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), proc


TOKENS: dict[int, str] = {}  # the token of each write answer, by the id of its client


def _token(r: httpx.Response) -> str:
    """The consistency token of a write answer (header and JSON agree)."""
    token = r.json()["consistency_token"]
    assert token and token.isdigit() and r.headers["X-Consistency-Token"] == token, r.text
    return token


def _at(token: str) -> dict[str, dict[str, str]]:
    return {"headers": {"X-Consistency-Token": token}}


def _add_codes(client: httpx.Client, codes: np.ndarray, ids=None, meta=None) -> list[int]:
    """Add codes; the answer's token is kept in ``TOKENS[id(client)]``."""
    files = {"codes": ("c.npy", _npy(codes))}
    if ids is not None:
        files["ids"] = ("i.npy", _npy(np.asarray(ids, dtype=np.int64)))
    if meta is not None:
        files["metadata"] = ("m.json", json.dumps(meta))
    r = client.post("/v1/items/codes", files=files)
    assert r.status_code == 201, r.text
    TOKENS[id(client)] = _token(r)
    return r.json()["ids"]


@pytest.mark.slow
def test_two_replicas_behave_as_one_service(model, request, tmp_path):
    """Add via A -> search via B (exact oracle); delete via B -> gone from A; concurrent adds
    through both get distinct ids; kill -9 of A during adds loses nothing acknowledged."""
    uri, collection = request.getfixturevalue("milvus_server").uri, f"two_{os.getpid()}"
    a, proc_a = _replica(model, uri, collection, tmp_path / "a.log")
    b, proc_b = _replica(model, uri, collection, tmp_path / "b.log")
    procs = [proc_a, proc_b]
    try:
        rng = np.random.default_rng(21)
        codes = rng.integers(0, 256, (200, 4), dtype=np.uint8)
        ids = np.array(_add_codes(a, codes, meta=[{"n": i} for i in range(200)]))
        added = _at(TOKENS[id(a)])  # reads through B pass A's write token back
        q = codes[:4]
        hexes = [c.tobytes().hex() for c in q]
        r = b.post("/v1/search/codes", json={"codes": hexes, "k": 15}, **added)
        for j, row in enumerate(r.json()["results"]):
            assert _hits(row) == _oracle(q[j : j + 1], ids, codes)[:15]
        assert b.get(f"/v1/items/{ids[0]}", **added).json()["metadata"] == {"n": 0}
        r = b.delete(f"/v1/items/{ids[0]}")
        assert r.status_code == 200
        deleted = _at(_token(r))
        assert a.get(f"/v1/items/{ids[0]}", **deleted).status_code == 404
        r = a.post("/v1/search/codes", json={"codes": codes[0].tobytes().hex(), "k": 5}, **deleted)
        assert ids[0] not in [h["id"] for h in r.json()["results"][0]]
        counts = [rep.get("/v1/info", **deleted).json()["items"] for rep in (a, b)]
        assert counts == [199, 199]

        # Concurrent adds through both replicas; A is killed with kill -9 half-way.
        acked: dict[int, bytes] = {}
        tokens: list[int] = []
        lock, stop = threading.Lock(), threading.Event()

        def client(replica: httpx.Client, seed: int) -> None:
            gen = np.random.default_rng(seed)
            while not stop.is_set():
                batch = gen.integers(0, 256, (4, 4), dtype=np.uint8)
                try:
                    r = replica.post("/v1/items/codes", files={"codes": ("c.npy", _npy(batch))})
                except httpx.HTTPError:
                    return  # the replica was killed: this add was never acknowledged
                if r.status_code == 201:
                    with lock:
                        tokens.append(int(_token(r)))
                        for i, c in zip(r.json()["ids"], batch, strict=True):
                            assert i not in acked, f"id {i} was assigned twice"
                            acked[i] = c.tobytes()

        threads = [
            threading.Thread(target=client, args=(rep, 100 + w))
            for w, rep in enumerate([a, a, b, b])
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc_a.pid, signal.SIGKILL)
        proc_a.wait(10)
        time.sleep(2)  # B's clients keep adding
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acked) >= 120, "the clients were too slow to reach the kill point"

        a, proc_a = _replica(model, uri, collection, tmp_path / "a2.log")
        procs.append(proc_a)
        expected = set(acked) | set(ids[1:].tolist())
        newest = _at(str(max(tokens)))  # the newest acknowledged write's token
        for replica in (a, b):
            listed, after = [], -1
            while after is not None:
                params = {"after": after, "limit": 1000}
                page = replica.get("/v1/items", params=params, **newest).json()
                listed += [(it["id"], bytes.fromhex(it["code"])) for it in page["items"]]
                after = page["next_after"]
            # Every acknowledged item; besides, at most the rows of the requests cut off by the
            # kill (one batch of 4 per client of A), which may or may not have been stored.
            stored = {i for i, _ in listed}
            assert expected <= stored and len(stored - expected) <= 2 * 4
            assert all(acked[i] == c for i, c in listed if i in acked)
            assert replica.get("/v1/info", **newest).json()["items"] == len(stored)
        some = list(acked)[:5]
        probe = [acked[i].hex() for i in some]
        r = a.post("/v1/search/codes", json={"codes": probe, "radius": 0}, **newest)
        for i, row in zip(some, r.json()["results"], strict=True):
            assert i in [h["id"] for h in row]
    finally:
        for p in procs:
            stop_server(p)


@pytest.mark.slow
def test_milvus_down_gives_503_then_recovers_without_restart(model, request, tmp_path):
    server = request.getfixturevalue("milvus_server")
    uri, collection = server.uri, f"down_{os.getpid()}"
    a, proc = _replica(model, uri, collection, tmp_path / "a.log")
    try:
        codes = np.random.default_rng(5).integers(0, 256, (20, 4), dtype=np.uint8)
        ids = _add_codes(a, codes)
        server.stop()
        for method, path, kwargs in (
            ("POST", "/v1/search/codes", {"json": {"codes": codes[0].tobytes().hex()}}),
            ("POST", "/v1/items/codes", {"files": {"codes": ("c.npy", _npy(codes[:1]))}}),
            ("GET", f"/v1/items/{ids[0]}", {}),
            ("GET", "/v1/items", {}),
            ("GET", "/v1/info", {}),
            ("DELETE", f"/v1/items/{ids[1]}", {}),
        ):
            r = a.request(method, path, **kwargs)
            assert r.status_code == 503, (path, r.text)
            assert "Milvus server" in r.json()["detail"], r.text
        ready = a.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert a.get("/healthz").status_code == 200
        server.start()
        deadline = time.monotonic() + 120
        while a.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
        assert a.get("/readyz").status_code == 200
        r = a.post("/v1/search/codes", json={"codes": codes[3].tobytes().hex(), "k": 3})
        assert r.status_code == 200 and (ids[3], 0) in _hits(r.json()["results"][0])
        assert a.get("/v1/info").json()["items"] == 20
        assert _add_codes(a, codes[:2])  # writes work again too
    finally:
        stop_server(proc)
        server.start()


@pytest.mark.slow
def test_read_your_writes_across_replicas_with_the_token(model, request, tmp_path):
    """Write through A, read through B at once with A's token (hashkd.client.Client carries
    it): the item is there, every time; a delete through B is gone from A with B's token. A
    replica with --consistency strong sees A's writes at once without a token."""
    from hashkd.client import ApiError, Client

    uri, collection = request.getfixturevalue("milvus_server").uri, f"ryw_{os.getpid()}"
    a, proc_a = _replica(model, uri, collection, tmp_path / "a.log")
    b, proc_b = _replica(model, uri, collection, tmp_path / "b.log")
    s, proc_s = _replica(model, uri, collection, tmp_path / "s.log", "--consistency", "strong")
    url = {rep: str(rep.base_url).rstrip("/") for rep in (a, b, s)}
    try:
        assert b.get("/v1/info").json()["index"]["consistency"] == "Bounded"
        assert s.get("/v1/info").json()["index"]["consistency"] == "Strong"
        writer = Client(url[a])
        previous = 0
        for round_ in range(6):
            [new] = writer.add([image_bytes(100 + round_)], metadata=[{"round": round_}])
            token = writer.consistency_token
            assert token is not None and int(token) > previous
            previous = int(token)
            with Client(url[b], consistency_token=token) as reader:
                item = reader.get(new)  # at once, through the other replica
                assert item.metadata == {"round": round_}
                hits = reader.search_codes(item.code, radius=0)[0]
                assert new in hits.ids
                assert reader.list(after=new - 1, limit=1).items[0].id == new
                assert reader.similar(new, k=1000).ids.count(new) == 0
            with Client(url[s]) as strong:  # no token: Strong reads see every acknowledged write
                assert strong.get(new).metadata == {"round": round_}
            with Client(url[b], consistency_token=token) as deleter:
                deleter.delete(new)
                gone = deleter.consistency_token
                assert int(gone) > int(token)
            with Client(url[a], consistency_token=gone) as reader:
                with pytest.raises(ApiError) as err:
                    reader.get(new)
                assert err.value.status_code == 404
                assert new not in reader.search_codes(item.code, radius=0)[0].ids
        writer.close()
    finally:
        for p in (proc_a, proc_b, proc_s):
            stop_server(p)


@pytest.mark.slow
def test_a_tie_group_beyond_one_milvus_answer_is_answered_in_id_order(model, request, tmp_path):
    """16,500 items at the same distance (more than Milvus's 16,384 hits per query): k-NN
    pages deep into the group and a radius answer are exact (ties by ascending id), not a 422."""
    uri, collection = request.getfixturevalue("milvus_server").uri, f"ties_{os.getpid()}"
    a, proc = _replica(model, uri, collection, tmp_path / "a.log")
    try:
        rng = np.random.default_rng(8)
        tie = np.array([[7, 7, 7, 7]], dtype=np.uint8)
        codes = np.concatenate([np.repeat(tie, 16_500, axis=0), rng.integers(0, 256, (300, 4))])
        codes = codes.astype(np.uint8)
        ids = rng.choice(10**9, len(codes), replace=False).astype(np.int64)
        _add_codes(a, codes, ids=ids)
        at = _at(TOKENS[id(a)])
        truth = _oracle(tie, ids, codes)
        for k, offset in ((10, 0), (100, 8000), (1000, 7192)):
            body = {"codes": tie[0].tobytes().hex(), "k": k, "offset": offset}
            r = a.post("/v1/search/codes", json=body, **at)
            assert r.status_code == 200, r.text
            assert _hits(r.json()["results"][0]) == truth[offset : offset + k]
        r = a.post("/v1/search/codes", json={"codes": tie[0].tobytes().hex(), "radius": 0}, **at)
        assert r.status_code == 200 and r.json()["truncated"] is True
        assert _hits(r.json()["results"][0]) == truth[:10_000]  # max_range_results
    finally:
        stop_server(proc)
