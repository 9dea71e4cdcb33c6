"""REST API tests with FastAPI's TestClient, tiny real models and brute-force oracles."""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hashkd.runtime import Encoder
from service import Settings, create_app
from service.batching import MicroBatcher
from service.catalog import Catalog
from tests.test_service_support import (
    build_artifacts,
    hamming,
    image_bytes,
    oracle_knn,
    oracle_range,
)

N_ITEMS = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def encoders(models: dict[str, Path]) -> dict[str, Encoder]:
    return {name: Encoder.from_artifact(path, backend="torch") for name, path in models.items()}


def _files(seeds, field="images"):
    return [(field, (f"img{s}.png", image_bytes(s), "image/png")) for s in seeds]


def _search(client, seed, **params):
    return client.post(
        "/v1/search", files={"image": ("q.png", image_bytes(seed), "image/png")}, params=params
    )


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """A symmetric service (vit32) holding N_ITEMS images with ids 100.. and label metadata."""
    settings = Settings(
        model=models["vit32"], store=tmp_path_factory.mktemp("store"), max_wait_ms=1.0
    )
    with TestClient(create_app(settings)) as client:
        ids = ",".join(str(100 + s) for s in range(N_ITEMS))
        meta = json.dumps([{"label": f"class{s % 3}", "seed": s} for s in range(N_ITEMS)])
        r = client.post(
            "/v1/items", files=_files(range(N_ITEMS)), data={"ids": ids, "metadata": meta}
        )
        assert r.status_code == 201, r.text
        assert r.json()["ids"] == [100 + s for s in range(N_ITEMS)]
        yield client


@pytest.fixture(scope="module")
def db_codes(encoders):
    codes = encoders["vit32"].encode([image_bytes(s) for s in range(N_ITEMS)])
    return [100 + s for s in range(N_ITEMS)], codes


def _pairs(hits):
    return [(h["id"], h["distance"]) for h in hits]


# -- search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_search_matches_brute_force_and_finds_the_item_itself(served, encoders, db_codes, k):
    ids, codes = db_codes
    for seed in (0, 4, 11):
        r = _search(served, seed, k=k)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["bits"] == 32 and body["took_ms"] >= 0
        qcode = encoders["vit32"].encode([image_bytes(seed)])
        assert _pairs(body["results"]) == oracle_knn(qcode, ids, codes, k)
        assert body["results"][0]["distance"] == 0
        if k >= N_ITEMS:  # the item itself is among the distance-0 hits
            assert (100 + seed, 0) in _pairs(body["results"])
        hit = next((h for h in body["results"] if h["id"] == 100 + seed), None)
        if hit is not None:
            assert hit["metadata"] == {"label": f"class{seed % 3}", "seed": seed}


def test_default_k_is_10(served):
    assert len(_search(served, 1).json()["results"]) == 10


@pytest.mark.parametrize("radius", [0, 1, 3, 8, 32])
def test_radius_search_returns_exactly_the_items_within_r(served, encoders, db_codes, radius):
    ids, codes = db_codes
    for seed in (2, 7):
        body = _search(served, seed, radius=radius).json()
        qcode = encoders["vit32"].encode([image_bytes(seed)])
        assert _pairs(body["results"]) == oracle_range(qcode, ids, codes, radius)
        assert (100 + seed, 0) in _pairs(body["results"])
        assert body["truncated"] is False


def test_batch_search_equals_single_searches(served):
    seeds = [3, 9, 3, 0]
    r = served.post("/v1/search/batch", files=_files(seeds), params={"k": 4})
    assert r.status_code == 200, r.text
    batch = r.json()["results"]
    assert len(batch) == len(seeds)
    for seed, hits in zip(seeds, batch, strict=True):
        assert hits == _search(served, seed, k=4).json()["results"]
    rr = served.post("/v1/search/batch", files=_files([5, 6]), params={"radius": 2}).json()[
        "results"
    ]
    assert rr == [_search(served, s, radius=2).json()["results"] for s in (5, 6)]


def test_concurrent_searches_through_the_micro_batcher_equal_sequential_ones(served):
    expected = {s: _search(served, s, k=3).json()["results"] for s in range(6)}
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            got[seed] = _search(served, seed, k=3).json()["results"]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


# -- items ---------------------------------------------------------------------------------------
def test_item_get_thumbnail_and_delete(served, db_codes):
    ids, codes = db_codes
    item = served.get("/v1/items/103").json()
    assert item["code"] == codes[3].tobytes().hex() and item["bits"] == 32
    assert item["metadata"] == {"label": "class0", "seed": 3} and item["has_thumbnail"] is True
    thumb = served.get("/v1/items/103/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    from PIL import Image

    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.format == "JPEG" and max(im.size) <= 96
    # Add a temporary item without ids (store assigns a new one above every id), then delete it.
    new = served.post("/v1/items", files=_files([50])).json()["ids"]
    assert len(new) == 1 and new[0] > max(ids)
    assert (new[0], 0) in _pairs(_search(served, 50, radius=0).json()["results"])
    assert served.delete(f"/v1/items/{new[0]}").json() == {"id": new[0], "deleted": True}
    assert served.get(f"/v1/items/{new[0]}").status_code == 404
    assert new[0] not in [h["id"] for h in _search(served, 50, k=50).json()["results"]]
    again = served.post("/v1/items", files=_files([50])).json()["ids"]
    assert again[0] > new[0]  # deleted ids are never handed out again
    served.delete(f"/v1/items/{again[0]}")


def test_add_codes_bulk(served, db_codes):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
    ids = np.array([900, 901, 902], dtype=np.int64)
    labels = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.uint8)

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    files = {
        "codes": ("codes.npy", npy(codes)),
        "ids": ("ids.npy", npy(ids)),
        "labels": ("labels.npy", npy(labels)),
    }
    r = served.post("/v1/items/codes", files=files)
    assert r.status_code == 201, r.text
    assert r.json()["ids"] == [900, 901, 902]
    item = served.get("/v1/items/901").json()
    assert item["code"] == codes[1].tobytes().hex() and item["metadata"] == {"labels": [0]}
    assert item["has_thumbnail"] is False
    assert served.get("/v1/items/901/thumbnail").status_code == 404
    for i in (900, 901, 902):
        served.delete(f"/v1/items/{i}")


def test_info_health_and_metrics(served):
    from importlib.metadata import version

    info = served.get("/v1/info").json()
    assert info["version"] == version("hashkd")
    assert info["protocol"] == "symmetric" and info["bits"] == 32
    assert info["index"]["size"] == N_ITEMS and info["items"] == N_ITEMS
    assert info["query_model"] == info["database_model"]
    assert served.get("/healthz").json() == {"status": "ok"}
    assert served.get("/readyz").json() == {"status": "ready"}
    assert _search(served, 3, k=2).status_code == 200  # this test's own search (runs alone too)
    text = served.get("/metrics").text
    assert f"hashkd_index_size {float(N_ITEMS)}" in text
    assert (
        'hashkd_request_duration_seconds_count{method="POST",route="/v1/search",status="200"}'
        in text
    )
    assert 'hashkd_encode_batch_size_count{model="query"}' in text
    assert served.get("/openapi.json").json()["paths"]["/v1/search"]["post"]["responses"]["413"]


# -- bad input -----------------------------------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb shape) with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def _truncated_jpeg() -> bytes:
    return image_bytes(1, size=64, fmt="JPEG")[:300]


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


BAD_REQUESTS = {
    "bomb_30000px": (
        lambda c: c.post("/v1/search", files={"image": ("b.png", _png_header_only(30000, 30000))}),
        (413, 422),
        "pixels",
    ),
    "empty_file": (
        lambda c: c.post("/v1/search", files={"image": ("e.png", b"")}),
        (415, 422),
        "empty",
    ),
    "no_body": (lambda c: c.post("/v1/search"), (415, 422), "image"),
    "not_an_image": (
        lambda c: c.post("/v1/search", files={"image": ("x.png", b"hello, world" * 10)}),
        (415, 422),
        "not a recognised image",
    ),
    "truncated_jpeg": (
        lambda c: c.post("/v1/search", files={"image": ("t.jpg", _truncated_jpeg())}),
        (415, 422),
        "truncated",
    ),
    "wrong_field": (
        lambda c: c.post("/v1/search", files={"picture": ("p.png", image_bytes(1))}),
        (415, 422),
        "'image' is required",
    ),
    "text_not_file": (lambda c: c.post("/v1/search", data={"image": "abc"}), (415, 422), "image"),
    "k_zero": (lambda c: _search(c, 1, k=0), (422,), "k="),
    "k_negative": (lambda c: _search(c, 1, k=-3), (422,), "k="),
    "k_too_big": (lambda c: _search(c, 1, k=1001), (422,), "k="),
    "k_not_int": (lambda c: _search(c, 1, k="ten"), (422,), "k="),
    "radius_negative": (lambda c: _search(c, 1, radius=-1), (422,), "radius="),
    "k_and_radius": (lambda c: _search(c, 1, k=3, radius=2), (422,), "not both"),
    "unknown_id_get": (lambda c: c.get("/v1/items/424242"), (404,), "424242"),
    "unknown_id_delete": (lambda c: c.delete("/v1/items/424242"), (404,), "424242"),
    "unknown_id_thumbnail": (lambda c: c.get("/v1/items/424242/thumbnail"), (404,), "424242"),
    "negative_id_path": (lambda c: c.get("/v1/items/-5"), (422,), "item_id"),
    "duplicate_id": (
        lambda c: c.post("/v1/items", files=_files([1]), data={"ids": "100"}),
        (409,),
        "100",
    ),
    "repeated_ids": (
        lambda c: c.post("/v1/items", files=_files([1, 2]), data={"ids": "7000,7000"}),
        (409, 422),
        "repeated",
    ),
    "ids_not_ints": (
        lambda c: c.post("/v1/items", files=_files([1]), data={"ids": "abc"}),
        (422,),
        "'abc'",
    ),
    "ids_count": (
        lambda c: c.post("/v1/items", files=_files([1, 2]), data={"ids": "7001"}),
        (422,),
        "one id per item",
    ),
    "metadata_not_json": (
        lambda c: c.post("/v1/items", files=_files([1]), data={"metadata": "{oops"}),
        (422,),
        "not valid JSON",
    ),
    "metadata_count": (
        lambda c: c.post("/v1/items", files=_files([1, 2]), data={"metadata": "[{}]"}),
        (422,),
        "one per item",
    ),
    "codes_wrong_length": (
        lambda c: c.post(
            "/v1/items/codes", files={"codes": ("c.npy", _npy(np.zeros((2, 3), np.uint8)))}
        ),
        (422,),
        "24 bits",
    ),
    "codes_wrong_dtype": (
        lambda c: c.post(
            "/v1/items/codes", files={"codes": ("c.npy", _npy(np.zeros((2, 4), np.float32)))}
        ),
        (422,),
        "uint8",
    ),
    "codes_pickled": (
        lambda c: c.post(
            "/v1/items/codes", files={"codes": ("c.npy", _npy(np.array([{"a": 1}], dtype=object)))}
        ),
        (422,),
        "object arrays",
    ),
    "codes_not_npy": (
        lambda c: c.post("/v1/items/codes", files={"codes": ("c.npy", b"PK\x03\x04junk")}),
        (422,),
        ".npy",
    ),
    "ids_mismatch": (
        lambda c: c.post(
            "/v1/items/codes",
            files={
                "codes": ("c.npy", _npy(np.zeros((2, 4), np.uint8))),
                "ids": ("i.npy", _npy(np.arange(3))),
            },
        ),
        (422,),
        "one id per code",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_a_json_detail_and_serving_continues(served, case):
    send, statuses, phrase = BAD_REQUESTS[case]
    r = send(served)
    assert r.status_code in statuses, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and phrase.lower() in detail.lower(), detail
    ok = _search(served, 0, k=2)
    assert ok.status_code == 200 and ok.json()["results"][0]["distance"] == 0
    assert served.get("/v1/info").json()["items"] == N_ITEMS  # nothing half-added


def test_upload_over_the_size_cap_is_413(models, tmp_path):
    settings = Settings(model=models["vit32"], store=tmp_path, max_upload_bytes=4096, max_images=2)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    big = buf.getvalue()  # noise does not compress: ~12 kB
    assert len(big) > 4096
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/search", files={"image": ("big.png", big)})
        assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]
        # A body far over every limit is refused by the request-body limit before parsing.
        r = c.post("/v1/search", files={"image": ("huge.png", b"\0" * (3 * 4096 * 2 + 2**21))})
        assert r.status_code == 413 and r.json()["detail"]
        r = c.post("/v1/search/batch", files=_files([1, 2, 3]))
        assert r.status_code in (400, 413, 422) and r.json()["detail"]
        r = c.post("/v1/search", files={"image": ("s.png", image_bytes(1))})
        assert r.status_code == 200


def test_decoded_pixel_cap_is_413(models, tmp_path):
    settings = Settings(model=models["vit32"], store=tmp_path, max_image_pixels=1000)
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/search", files={"image": ("big.png", image_bytes(3, size=64))}
        )  # 4096 px > 1000
        assert r.status_code == 413 and "1000 pixels" in r.json()["detail"]
        assert (
            c.post("/v1/search", files={"image": ("s.png", image_bytes(1, size=24))}).status_code
            == 200
        )


def test_writes_need_the_api_key_reads_stay_open(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_TEST_KEY", "s3cret")
    settings = Settings(model=models["vit32"], store=tmp_path, api_key_env="HKD_TEST_KEY")
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/items", files=_files([1]))
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        r = c.post("/v1/items", files=_files([1]), headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and "valid API key" in r.json()["detail"]
        r = c.post("/v1/items/codes", files={"codes": ("c.npy", _npy(np.zeros((1, 4), np.uint8)))})
        assert r.status_code == 401
        r = c.post("/v1/items", files=_files([1]), headers={"X-API-Key": "s3cret"})
        assert r.status_code == 201
        new_id = r.json()["ids"][0]
        assert c.delete(f"/v1/items/{new_id}").status_code == 401
        assert c.get(f"/v1/items/{new_id}").status_code == 200
        assert _search(c, 1, k=1).json()["results"][0]["id"] == new_id
        assert c.get("/v1/info").json()["auth"] is True
        assert c.delete(f"/v1/items/{new_id}", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_unset_api_key_env_is_refused(models, tmp_path, monkeypatch):
    monkeypatch.delenv("HKD_TEST_NOPE", raising=False)
    with pytest.raises(ValueError, match="HKD_TEST_NOPE"):
        Settings(model=models["vit32"], store=tmp_path, api_key_env="HKD_TEST_NOPE")


# -- asymmetric mode ------------------------------------------------------------------------------
def test_asymmetric_mode_uses_each_model_on_its_side(models, encoders, tmp_path):
    settings = Settings(model=models["vit32"], database_model=models["cnn32"], store=tmp_path)
    seeds = list(range(6))
    db_codes = encoders["cnn32"].encode([image_bytes(s) for s in seeds])
    vit_codes = encoders["vit32"].encode([image_bytes(s) for s in seeds])
    assert not np.array_equal(db_codes, vit_codes)  # the two models really differ
    with TestClient(create_app(settings)) as c:
        info = c.get("/v1/info").json()
        assert info["protocol"] == "asymmetric"
        assert info["query_model"]["backbone"] == "vit_tiny_patch16_224"
        assert info["database_model"]["backbone"] == "resnet10t"
        ids = c.post("/v1/items", files=_files(seeds)).json()["ids"]
        for i, item_id in enumerate(ids):  # stored code = database-model encode
            assert c.get(f"/v1/items/{item_id}").json()["code"] == db_codes[i].tobytes().hex()
        for s in (0, 3):  # query code = query-model encode, compared against database codes
            hits = _search(c, s, k=len(seeds)).json()["results"]
            assert _pairs(hits) == oracle_knn(vit_codes[s : s + 1], ids, db_codes, len(seeds))


def test_models_of_different_lengths_are_refused(models, tmp_path):
    from hashkd.cli import main

    settings = Settings(model=models["vit32"], database_model=models["vit16"], store=tmp_path)
    with (
        pytest.raises(ValueError, match="32-bit codes but the database model .* 16-bit"),
        TestClient(create_app(settings)),
    ):
        pass
    code = main(
        [
            "serve",
            "--model",
            str(models["vit32"]),
            "--database-model",
            str(models["vit16"]),
            "--store",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2


def test_store_of_another_code_length_is_refused(models, tmp_path):
    with TestClient(create_app(Settings(model=models["vit32"], store=tmp_path))):
        pass
    with (
        pytest.raises(ValueError, match="holds 32-bit codes"),
        TestClient(create_app(Settings(model=models["vit16"], store=tmp_path))),
    ):
        pass


def test_settings_come_from_the_environment(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHKD_MODEL", str(models["vit32"]))
    monkeypatch.setenv("HASHKD_STORE", str(tmp_path))
    monkeypatch.setenv("HASHKD_MAX_BATCH", "7")
    monkeypatch.setenv("HASHKD_BATCHING", "false")
    s = Settings()
    assert s.model == models["vit32"] and s.max_batch == 7 and s.batching is False
    assert Settings(max_batch=3).max_batch == 3  # explicit values win
    with pytest.raises(ValueError, match="not a model artifact"):
        Settings(model=tmp_path)


def test_cli_reports_bad_settings_in_one_line(tmp_path, capsys):
    from hashkd.cli import main

    assert main(["serve", "--model", str(tmp_path), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hashkd: error: model=") and "config.json" in err and "\n" not in err


# -- durability and recovery (in process) -----------------------------------------------------------
def _index_state(cat: Catalog) -> dict[int, bytes]:
    ids = cat.index.ids()
    return {int(i): cat.index.get([i])[0].tobytes() for i in ids}


def test_catalog_recovers_from_snapshot_replay_and_rebuild(tmp_path, rng):
    codes = rng.integers(0, 256, size=(40, 4), dtype=np.uint8)
    cat = Catalog(tmp_path, 32, snapshot_every=10)
    ids = cat.add(codes[:25])
    assert ids == list(range(25))
    cat.delete(3)
    cat.add(codes[25:30], ids=[3, 100, 101, 102, 103])  # re-add a deleted id with another code
    cat.delete(101)
    expected = {i: c.tobytes() for i, c in zip(ids, codes[:25], strict=True) if i != 3}
    expected.update(
        {
            3: codes[25].tobytes(),
            100: codes[26].tobytes(),
            102: codes[28].tobytes(),
            103: codes[29].tobytes(),
        }
    )
    assert _index_state(cat) == expected
    assert (
        cat.snapshot_seq > 0 and cat.store.last_seq() > cat.snapshot_seq
    )  # changes after the snapshot
    # "Crash": no close(), no final snapshot (the OS drops a dead process's folder lock).
    # A new catalog replays the tail of the change log.
    cat._folder_lock.release()
    cat2 = Catalog(tmp_path, 32, snapshot_every=10)
    assert cat2.recovery == "snapshot+replay"
    assert _index_state(cat2) == expected
    cat2.close()
    cat3 = Catalog(tmp_path, 32)
    assert cat3.recovery == "snapshot" and _index_state(cat3) == expected
    cat3.close()
    # A corrupt snapshot is not fatal: the index is rebuilt from SQLite.
    pointer = json.loads((tmp_path / "index" / "snapshot.json").read_text())
    (tmp_path / "index" / pointer["file"]).write_bytes(b"garbage")
    cat4 = Catalog(tmp_path, 32)
    assert cat4.recovery == "rebuild" and _index_state(cat4) == expected
    cat4.close()
    (tmp_path / "index" / "snapshot.json").write_text("{not json")
    cat5 = Catalog(tmp_path, 32)
    assert cat5.recovery == "rebuild" and _index_state(cat5) == expected
    # brute-force check of search through the recovered index
    q = codes[:2]
    dist, got = cat5.index.search(q, 5)
    all_ids = sorted(expected)
    all_codes = np.frombuffer(b"".join(expected[i] for i in all_ids), np.uint8).reshape(-1, 4)
    for row in range(2):
        want = oracle_knn(q[row : row + 1], all_ids, all_codes, 5)
        assert list(zip(got[row].tolist(), dist[row].tolist(), strict=True)) == want
    cat5.close()


# -- micro-batcher ----------------------------------------------------------------------------------
def test_micro_batcher_groups_concurrent_requests_and_isolates_failures():
    sizes: list[int] = []
    gate = threading.Event()

    def encode(items):
        gate.wait(5)
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return np.array([[x % 256, (x * 7) % 256] for x in items], dtype=np.uint8)

    batcher = MicroBatcher(encode, max_batch=8, max_wait=0.05, on_batch=sizes.append)
    try:
        futures = [batcher.submit([i, i + 100]) for i in range(6)]
        bad = batcher.submit([-1])
        gate.set()
        for i, fut in enumerate(futures):
            want = np.array([[i, (i * 7) % 256], [i + 100, ((i + 100) * 7) % 256]], dtype=np.uint8)
            np.testing.assert_array_equal(fut.result(5), want)
        with pytest.raises(ValueError, match="negative"):
            bad.result(5)
        assert max(sizes) > 2  # requests were really encoded together
        # ``then`` runs on the request's own rows in the worker thread.
        assert batcher.submit([3, 4], then=lambda c: c[:, 0].tolist()).result(5) == [3, 4]
        assert sum(sizes) == 14  # every good image exactly once
        assert all(s <= 8 for s in sizes)
    finally:
        batcher.close()


def test_search_with_batching_off_gives_the_same_results(models, tmp_path, encoders):
    settings = Settings(model=models["vit32"], store=tmp_path, batching=False)
    with TestClient(create_app(settings)) as c:
        ids = c.post("/v1/items", files=_files(range(5))).json()["ids"]
        codes = encoders["vit32"].encode([image_bytes(s) for s in range(5)])
        assert _pairs(_search(c, 2, k=5).json()["results"]) == oracle_knn(codes[2:3], ids, codes, 5)
        assert c.get("/v1/info").json()["batching"]["enabled"] is False


def test_hamming_oracle_is_right():
    a = np.array([[0b10110000, 0xFF]], dtype=np.uint8)
    b = np.array([[0b10110000, 0xFF], [0b00110001, 0x0F]], dtype=np.uint8)
    assert hamming(a, b).tolist() == [[0, 6]]


# -- start-up and ownership -----------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "kernel"), [("flat", True), ("hnsw:16", False)])
def test_index_warm_up_runs_once_at_start_up(models, tmp_path, monkeypatch, spec, kernel):
    """The engine calls ``index.warm_up()`` before the first request; only the scan-based
    backends compile a kernel (hnsw has none: the base class's no-op)."""
    import indexes
    from indexes import hamming_scan

    warmed: list[object] = []
    compiled: list[int] = []
    cls = type(indexes.create_index(spec, 32))
    original = cls.warm_up

    def record(self):
        warmed.append(self)
        original(self)

    monkeypatch.setattr(cls, "warm_up", record)
    monkeypatch.setattr(hamming_scan, "warm_up", compiled.append)
    settings = Settings(model=models["vit32"], store=tmp_path, index_spec=spec)
    with TestClient(create_app(settings)) as c:
        assert warmed == [c.app.state.engine.catalog.index]  # before any request
        assert compiled == ([4] if kernel and hamming_scan.AVAILABLE else [])
        ids = c.post("/v1/items", files=_files(range(3))).json()["ids"]
        assert _search(c, 1, k=1).json()["results"][0]["id"] == ids[1]
    assert len(warmed) == 1


def test_k_bound_is_one_constant_shown_in_openapi_and_info(served):
    from service.schemas import MAX_K

    params = served.get("/openapi.json").json()["paths"]["/v1/search"]["post"]["parameters"]
    k_schema = next(p for p in params if p["name"] == "k")["schema"]
    bounds = [s.get("maximum") for s in k_schema.get("anyOf", [k_schema])]
    assert MAX_K in bounds
    assert served.get("/v1/info").json()["limits"]["max_k"] == MAX_K
    assert _search(served, 1, k=MAX_K).status_code == 200
    assert _search(served, 1, k=MAX_K + 1).status_code == 422


def test_routers_call_engine_methods_only():
    """No router reaches through the engine (``engine.catalog.store...``)."""
    import ast

    routers = Path(__file__).resolve().parents[1] / "service" / "routers"
    reaches = []
    for path in sorted(routers.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            inner = node.value if isinstance(node, ast.Attribute) else None
            if (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == "engine"
            ):
                reaches.append(f"{path.name}:{node.lineno}: engine.{inner.attr}.{node.attr}")
    assert reaches == []
