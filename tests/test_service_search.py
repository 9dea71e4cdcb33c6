"""Search by item, by code, with metadata filters and pages; upsert and listing of items;
hostile JSON. Real app (lifespan, tiny real models) against brute-force oracles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hashkd.runtime import Encoder
from service import Settings, create_app
from service.schemas import MAX_RANK
from tests.test_service_support import build_artifacts, hamming, image_bytes

N_ITEMS = 30
IDS = [100 + s for s in range(N_ITEMS)]


def _meta(seed: int) -> dict[str, Any]:
    return {"label": f"class{seed % 3}", "seed": seed, "tags": [seed % 2, 10 + seed % 5]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def encoder(models) -> Encoder:
    return Encoder.from_artifact(models["vit32"], backend="torch")


def _files(seeds, field="images"):
    return [(field, (f"img{s}.png", image_bytes(s), "image/png")) for s in seeds]


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    settings = Settings(
        model=models["vit32"], store=tmp_path_factory.mktemp("store"), max_wait_ms=1.0
    )
    with TestClient(create_app(settings)) as client:
        meta = json.dumps([_meta(s) for s in range(N_ITEMS)])
        r = client.post(
            "/v1/items",
            files=_files(range(N_ITEMS)),
            data={"ids": ",".join(map(str, IDS)), "metadata": meta},
        )
        assert r.status_code == 201, r.text
        yield client


@pytest.fixture(scope="module")
def db_codes(encoder) -> np.ndarray:
    return encoder.encode([image_bytes(s) for s in range(N_ITEMS)])


def oracle(
    qcode: np.ndarray,
    codes: np.ndarray,
    keep: Callable[[int], bool] = lambda seed: True,
    k: int | None = None,
    radius: int | None = None,
) -> list[tuple[int, int]]:
    """(id, distance) over the items whose seed passes ``keep``: sorted by (distance, id)."""
    dist = hamming(qcode, codes)[0]
    pairs = sorted((int(dist[s]), IDS[s]) for s in range(N_ITEMS) if keep(s))
    if radius is not None:
        pairs = [p for p in pairs if p[0] <= radius]
    if k is not None:
        pairs = pairs[:k]
    return [(i, d) for d, i in pairs]


def _pairs(hits):
    return [(h["id"], h["distance"]) for h in hits]


def _search(client, seed, **params):
    if "filter" in params:
        params["filter"] = json.dumps(params["filter"])
    return client.post(
        "/v1/search", files={"image": ("q.png", image_bytes(seed), "image/png")}, params=params
    )


# Filters and the independent predicates they must select (written from the issue's rules).
FILTERS: dict[str, tuple[dict, Callable[[int], bool]]] = {
    "one_value": ({"label": "class1"}, lambda s: s % 3 == 1),
    "any_of": ({"label": ["class0", "class2"]}, lambda s: s % 3 in (0, 2)),
    "and": ({"label": "class0", "tags": 1}, lambda s: s % 3 == 0 and s % 2 == 1),
    "list_element": ({"tags": [12, 14]}, lambda s: s % 5 in (2, 4)),
    "number_by_value": ({"seed": [4.0, 29]}, lambda s: s in (4, 29)),
    "few": ({"seed": 17}, lambda s: s == 17),
    "none": ({"label": "class9"}, lambda s: False),
    "string_is_not_number": ({"seed": "4"}, lambda s: False),
}


# -- filters ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("k", [1, 5, 40])
def test_filtered_knn_is_exactly_the_nearest_among_matching_items(
    served, encoder, db_codes, name, k
):
    flt, keep = FILTERS[name]
    for seed in (0, 17):
        q = encoder.encode([image_bytes(seed)])
        want = oracle(q, db_codes, keep, k=k)
        r = _search(served, seed, k=k, filter=flt)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert _pairs(hits) == want
        assert len(hits) == min(k, sum(keep(s) for s in range(N_ITEMS)))  # never short
        assert all(h["metadata"] == _meta(h["id"] - 100) for h in hits)


@pytest.mark.parametrize("name", ["any_of", "list_element", "few"])
def test_filtered_radius_batch_and_codes_agree_with_the_oracle(served, encoder, db_codes, name):
    flt, keep = FILTERS[name]
    seeds = [3, 8]
    q = encoder.encode([image_bytes(s) for s in seeds])
    for radius in (0, 6, 32):
        hits = _search(served, 3, radius=radius, filter=flt).json()["results"]
        assert _pairs(hits) == oracle(q[:1], db_codes, keep, radius=radius)
    batch = served.post(
        "/v1/search/batch", files=_files(seeds), params={"k": 7, "filter": json.dumps(flt)}
    ).json()["results"]
    codes = served.post(
        "/v1/search/codes",
        json={"codes": [c.tobytes().hex() for c in q], "k": 7, "filter": flt},
    ).json()["results"]
    for row, hits in enumerate(batch):
        assert _pairs(hits) == oracle(q[row : row + 1], db_codes, keep, k=7)
        assert codes[row] == hits


def test_a_selective_filter_finds_items_far_outside_the_global_top_k(served, encoder, db_codes):
    """Post-filtering the global top-k would come back short; the filter must not."""
    q = encoder.encode([image_bytes(0)])
    global_top = {i for i, _ in oracle(q, db_codes, k=3)}
    far = [i for i, _ in oracle(q, db_codes)][-2:]  # the two farthest items
    assert not set(far) & global_top
    flt = {"seed": [i - 100 for i in far]}
    hits = _search(served, 0, k=3, filter=flt).json()["results"]
    assert _pairs(hits) == oracle(q, db_codes, lambda s: 100 + s in far, k=3)
    assert len(hits) == 2


# -- pagination ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flt", [None, {"label": ["class0", "class1"]}])
def test_pages_concatenate_to_the_full_ranking(served, encoder, db_codes, flt):
    keep = (lambda s: True) if flt is None else (lambda s: s % 3 in (0, 1))
    q = encoder.encode([image_bytes(5)])
    full = oracle(q, db_codes, keep)
    pages, offset = [], 0
    while True:
        params = {"k": 4, "offset": offset} | ({"filter": flt} if flt else {})
        hits = _search(served, 5, **params).json()["results"]
        pages += _pairs(hits)
        if len(hits) < 4:
            break
        offset += 4
    assert pages == full
    # the same through /v1/search/codes
    body = {"codes": q[0].tobytes().hex(), "k": 4, "offset": 8, "filter": flt}
    assert _pairs(served.post("/v1/search/codes", json=body).json()["results"][0]) == full[8:12]


# -- similar ---------------------------------------------------------------------------------------
def test_similar_uses_the_stored_code_and_excludes_the_item(served, db_codes):
    for seed in (2, 11):
        item = IDS[seed]
        others = lambda s, seed=seed: s != seed  # noqa: E731
        got = served.get(f"/v1/items/{item}/similar", params={"k": 6})
        assert got.status_code == 200, got.text
        assert _pairs(got.json()["results"]) == oracle(
            db_codes[seed : seed + 1], db_codes, others, k=6
        )
        everything = served.get(f"/v1/items/{item}/similar", params={"k": 1000}).json()
        assert item not in [h["id"] for h in everything["results"]]
        assert len(everything["results"]) == N_ITEMS - 1
        rr = served.get(f"/v1/items/{item}/similar", params={"radius": 5}).json()["results"]
        assert _pairs(rr) == oracle(db_codes[seed : seed + 1], db_codes, others, radius=5)
        page = served.get(
            f"/v1/items/{item}/similar",
            params={"k": 3, "offset": 3, "filter": json.dumps({"label": "class2"})},
        ).json()["results"]
        both = lambda s, seed=seed: s != seed and s % 3 == 2  # noqa: E731
        assert _pairs(page) == oracle(db_codes[seed : seed + 1], db_codes, both, k=6)[3:6]


# -- search by code ----------------------------------------------------------------------------------
def test_search_by_code_equals_search_by_image(served, encoder):
    q = encoder.encode([image_bytes(9)])
    image_hits = _search(served, 9, k=8).json()["results"]
    one = served.post("/v1/search/codes", json={"codes": q[0].tobytes().hex(), "k": 8})
    assert one.status_code == 200, one.text
    assert one.json()["results"] == [image_hits] and one.json()["bits"] == 32
    upper = served.post("/v1/search/codes", json={"codes": [q[0].tobytes().hex().upper()] * 2})
    assert len(upper.json()["results"]) == 2 and len(upper.json()["results"][0]) == 10


# -- items: upsert and list ----------------------------------------------------------------------------
def test_upsert_replaces_image_and_metadata_durably(models, encoder, tmp_path):
    settings = Settings(model=models["vit32"], store=tmp_path, snapshot_every=1000)
    code = lambda s: encoder.encode([image_bytes(s)])[0].tobytes().hex()  # noqa: E731
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/items", files=_files([1, 2]), data={"ids": "10,11"}).status_code == 201
        r = c.put("/v1/items/12", files={"image": ("a.png", image_bytes(3))})
        assert r.status_code == 200 and r.json() == {"id": 12, "created": True}
        assert c.get("/v1/items/12").json()["code"] == code(3)
        r = c.put("/v1/items/10", data={"metadata": json.dumps({"label": "new"})})
        assert r.json() == {"id": 10, "created": False}
        item = c.get("/v1/items/10").json()
        assert item["code"] == code(1) and item["metadata"] == {"label": "new"}
        r = c.put(
            "/v1/items/11",
            files={"image": ("b.png", image_bytes(4))},
            data={"metadata": '{"label": "four"}'},
        )
        assert r.json() == {"id": 11, "created": False}
        hits = c.post(
            "/v1/search/codes", json={"codes": code(4), "radius": 0, "filter": {"label": "four"}}
        ).json()["results"][0]
        assert [h["id"] for h in hits] == [11]
        old = c.post("/v1/search/codes", json={"codes": code(2), "radius": 0}).json()["results"]
        assert 11 not in [h["id"] for h in old[0]]  # the old code is gone from the index
        # adding an existing id stays a conflict; PUT is the way to replace
        assert c.post("/v1/items", files=_files([5]), data={"ids": "10"}).status_code == 409
        assert c.put("/v1/items/77", data={"metadata": "{}"}).status_code == 404
        r = c.put("/v1/items/10")
        assert r.status_code == 422 and "image, metadata or both" in r.json()["detail"]
        assert c.post("/v1/items", files=_files([6])).json()["ids"] == [13]  # above upserted 12
    # "Crash-free restart": everything acknowledged is there, in the store and the index.
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/items/10").json()["metadata"] == {"label": "new"}
        assert c.get("/v1/items/11").json()["code"] == code(4)
        hits = c.post("/v1/search/codes", json={"codes": code(4), "radius": 0}).json()["results"]
        assert [h["id"] for h in hits[0]] == [11]
        hits = c.post(
            "/v1/search/codes", json={"codes": code(1), "k": 1, "filter": {"label": "new"}}
        ).json()["results"][0]
        assert [(h["id"], h["distance"]) for h in hits] == [(10, 0)]


def test_list_pages_through_every_item(served):
    seen, after = [], None
    while True:
        params = {"limit": 7} | ({"after": after} if after is not None else {})
        body = served.get("/v1/items", params=params).json()
        seen += body["items"]
        after = body["next_after"]
        if after is None:
            break
        assert after == body["items"][-1]["id"]
    assert [i["id"] for i in seen] == IDS
    assert all(i["metadata"] == _meta(i["id"] - 100) for i in seen)
    assert served.get("/v1/items", params={"after": IDS[-1]}).json() == {
        "items": [],
        "next_after": None,
    }
    assert served.get("/v1/items", params={"limit": 0}).status_code == 422


# -- bad and hostile input ------------------------------------------------------------------------------
DEEP = "[" * 5000 + "]" * 5000

BAD = {
    "similar_unknown_id": (lambda c: c.get("/v1/items/424242/similar"), (404,), "424242"),
    "code_too_short": (
        lambda c: c.post("/v1/search/codes", json={"codes": "abcd"}),
        (422,),
        "expected 8 hex digits",
    ),
    "code_not_hex": (
        lambda c: c.post("/v1/search/codes", json={"codes": ["zzzzzzzz"]}),
        (422,),
        "32-bit code",
    ),
    "codes_empty": (lambda c: c.post("/v1/search/codes", json={"codes": []}), (422,), "empty"),
    "codes_too_many": (
        lambda c: c.post("/v1/search/codes", json={"codes": ["00000000"] * 1025}),
        (422,),
        "at most 1024",
    ),
    "codes_body_not_json": (
        lambda c: c.post(
            "/v1/search/codes", content=b"{oops", headers={"content-type": "application/json"}
        ),
        (400, 422),
        "json",
    ),
    "codes_extra_field": (
        lambda c: c.post("/v1/search/codes", json={"codes": "00000000", "kk": 3}),
        (422,),
        "kk",
    ),
    "filter_not_json": (lambda c: _search_raw(c, filter="{label"), (422,), "not valid JSON"),
    "filter_not_object": (lambda c: _search_raw(c, filter="[1]"), (422,), "JSON object"),
    "filter_nested_value": (
        lambda c: _search_raw(c, filter='{"label": {"$ne": 1}}'),
        (422,),
        "'label'",
    ),
    "filter_empty_list": (lambda c: _search_raw(c, filter='{"label": []}'), (422,), "empty"),
    "filter_in_codes_body": (
        lambda c: c.post("/v1/search/codes", json={"codes": "00000000", "filter": {"a": [[1]]}}),
        (422,),
        "'a'",
    ),
    "offset_past_max_rank": (
        lambda c: _search_raw(c, k=10, offset=MAX_RANK - 5),
        (422,),
        "offset",
    ),
    "offset_with_radius": (lambda c: _search_raw(c, radius=2, offset=3), (422,), "radius"),
    "offset_negative": (lambda c: _search_raw(c, offset=-1), (422,), "offset"),
    "similar_k_and_radius": (
        lambda c: c.get("/v1/items/100/similar", params={"k": 2, "radius": 2}),
        (422,),
        "not both",
    ),
    # hostile JSON: nesting, NaN, size
    "deep_metadata_add": (
        lambda c: c.post("/v1/items", files=_files([1]), data={"metadata": DEEP}),
        (422,),
        "nested 5000 levels",
    ),
    "deep_metadata_object": (
        lambda c: c.post(
            "/v1/items", files=_files([1]), data={"metadata": '[{"a": ' + DEEP + "}]"}
        ),
        (422,),
        "nested",
    ),
    "deep_metadata_put": (
        lambda c: c.put("/v1/items/100", data={"metadata": '{"a": ' + DEEP + "}"}),
        (422,),
        "nested",
    ),
    "deep_filter": (lambda c: _search_raw(c, filter=DEEP), (422,), "nested"),
    "deep_codes_body": (
        lambda c: c.post(
            "/v1/search/codes",
            content=('{"codes": ' + DEEP + "}").encode(),
            headers={"content-type": "application/json"},
        ),
        (422,),
        "nested",
    ),
    "nan_metadata": (
        lambda c: c.post("/v1/items", files=_files([1]), data={"metadata": '[{"a": NaN}]'}),
        (422,),
        "NaN",
    ),
    "huge_codes_body": (
        lambda c: c.post(
            "/v1/search/codes",
            content=b'{"codes": "' + b"0" * (3 * 2**20) + b'"}',
            headers={"content-type": "application/json"},
        ),
        (413,),
        "larger",
    ),
    "metadata_put_not_object": (
        lambda c: c.put("/v1/items/100", data={"metadata": "[1, 2]"}),
        (422,),
        "JSON object",
    ),
}


def _search_raw(client, **params):
    return client.post(
        "/v1/search", files={"image": ("q.png", image_bytes(1), "image/png")}, params=params
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_and_hostile_input_get_a_4xx_with_a_detail_and_serving_continues(served, case):
    send, statuses, phrase = BAD[case]
    r = send(served)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and phrase.lower() in detail.lower(), detail
    assert served.get("/v1/items/100").json()["metadata"] == _meta(0)  # nothing changed
    assert served.get("/v1/info").json()["items"] == N_ITEMS
    assert _search_raw(served, k=1).status_code == 200


def test_new_endpoints_are_in_the_openapi_schema(served):
    paths = served.get("/openapi.json").json()["paths"]
    assert "get" in paths["/v1/items/{item_id}/similar"]
    assert "post" in paths["/v1/search/codes"]
    assert {"put", "get", "delete"} <= set(paths["/v1/items/{item_id}"])
    assert "get" in paths["/v1/items"]
    names = {p["name"] for p in paths["/v1/search"]["post"]["parameters"]}
    assert {"k", "radius", "offset", "filter"} <= names
    limits = served.get("/v1/info").json()["limits"]
    assert limits["max_rank"] == MAX_RANK and limits["max_json_depth"] >= 8


@pytest.mark.parametrize("spec", ["flat", "ivf:4", "hash:8"])
def test_get_known_returns_the_codes_of_the_indexed_ids_only(spec, rng):
    import indexes

    index = indexes.create_index(spec, 32)
    codes = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    if "train" in index.supports:
        index.train(codes)
    index.add(np.arange(0, 100, 2), codes)  # even ids 0..98
    ids, got = index.get_known([3, 4, 10, 11, 98, 200])
    assert ids.tolist() == [4, 10, 98]
    assert np.array_equal(got, codes[[2, 5, 49]])
    none_ids, none_codes = index.get_known([1, 3])
    assert none_ids.tolist() == [] and none_codes.shape == (0, 4)
