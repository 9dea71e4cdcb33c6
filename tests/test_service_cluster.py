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
    complete = ClusterCatalog._complete_ties
    monkeypatch.setattr(
        ClusterCatalog,
        "_complete_ties",
        lambda self, *a: completions.append(a[2]) or complete(self, *a),
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


def test_items_add_put_delete_thumbnail_and_limits(lite):
    client, ids, codes, _ = lite
    r = client.post(
        "/v1/items",
        files=[("images", ("a.png", image_bytes(1), "image/png"))],
        data={"ids": "77", "metadata": '[{"label": "img"}]'},
    )
    assert r.status_code == 201 and r.json()["ids"] == [77]
    thumb = client.get("/v1/items/77/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG
    dup = client.post(
        "/v1/items", files=[("images", ("a.png", image_bytes(2), "image/png"))], data={"ids": "77"}
    )
    assert dup.status_code == 409 and "77" in dup.json()["detail"]
    code_before = client.get("/v1/items/77").json()["code"]
    r = client.put("/v1/items/77", data={"metadata": '{"label": "renamed"}'})
    assert r.json() == {"id": 77, "created": False}
    item = client.get("/v1/items/77").json()
    assert item["metadata"] == {"label": "renamed"} and item["code"] == code_before
    assert item["has_thumbnail"] is True
    r = client.put("/v1/items/78", files={"image": ("b.png", image_bytes(3), "image/png")})
    assert r.json() == {"id": 78, "created": True}
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
    assert info["index"]["mode"] == "cluster" and info["index"]["consistency"] == "Strong"


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


# -- several replicas over a real Milvus server --------------------------------------------------
def _replica(model: Path, uri: str, collection: str, log: Path) -> tuple[httpx.Client, object]:
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
    ]
    proc = start_server(args, port, log)
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), proc


def _add_codes(client: httpx.Client, codes: np.ndarray, ids=None, meta=None) -> list[int]:
    files = {"codes": ("c.npy", _npy(codes))}
    if ids is not None:
        files["ids"] = ("i.npy", _npy(np.asarray(ids, dtype=np.int64)))
    if meta is not None:
        files["metadata"] = ("m.json", json.dumps(meta))
    r = client.post("/v1/items/codes", files=files)
    assert r.status_code == 201, r.text
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
        q = codes[:4]
        r = b.post("/v1/search/codes", json={"codes": [c.tobytes().hex() for c in q], "k": 15})
        for j, row in enumerate(r.json()["results"]):
            assert _hits(row) == _oracle(q[j : j + 1], ids, codes)[:15]
        assert b.get(f"/v1/items/{ids[0]}").json()["metadata"] == {"n": 0}
        assert b.delete(f"/v1/items/{ids[0]}").status_code == 200
        assert a.get(f"/v1/items/{ids[0]}").status_code == 404
        r = a.post("/v1/search/codes", json={"codes": codes[0].tobytes().hex(), "k": 5})
        assert ids[0] not in [h["id"] for h in r.json()["results"][0]]
        assert a.get("/v1/info").json()["items"] == b.get("/v1/info").json()["items"] == 199

        # Concurrent adds through both replicas; A is killed with kill -9 half-way.
        acked: dict[int, bytes] = {}
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
        for replica in (a, b):
            listed, after = [], -1
            while after is not None:
                page = replica.get("/v1/items", params={"after": after, "limit": 1000}).json()
                listed += [(it["id"], bytes.fromhex(it["code"])) for it in page["items"]]
                after = page["next_after"]
            assert {i for i, _ in listed} == expected
            assert all(acked[i] == c for i, c in listed if i in acked)
            assert replica.get("/v1/info").json()["items"] == len(expected)
        some = list(acked)[:5]
        probe = [acked[i].hex() for i in some]
        r = a.post("/v1/search/codes", json={"codes": probe, "radius": 0})
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
