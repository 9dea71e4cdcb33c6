"""``hashkd.client.Client`` and ``hashkd query`` against a live server (uvicorn in a thread on a
free port), checked against brute-force oracles on the model's own codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hashkd.client import ApiError, Client, ClientError, Hit, Item, SearchResult
from hashkd.runtime import Encoder
from service import Settings
from tests.conftest import TINY_VIT
from tests.test_service_support import (
    build_artifact,
    free_port,
    image_bytes,
    oracle_knn,
    serve_in_thread,
)

KEY = "client-test-key"
SEEDS = list(range(10))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(base URL, encoder): a server with an API key, holding no items at start."""
    root = tmp_path_factory.mktemp("client")
    model = build_artifact(root / "vit32", TINY_VIT, 32, 0)
    settings = Settings(model=model, store=root / "store", api_key=KEY, max_wait_ms=1.0)
    with serve_in_thread(settings) as url:
        yield url, Encoder.from_artifact(model, backend="torch")


@pytest.fixture(scope="module")
def filled(server, tmp_path_factory):
    """The server with SEEDS added through the client; (url, encoder, ids, codes, image paths)."""
    url, encoder = server
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for s in SEEDS:
        path = folder / f"img{s}.png"
        path.write_bytes(image_bytes(s))
        paths.append(path)
    with Client(url, api_key=KEY) as client:
        ids = client.add(
            paths, ids=[500 + s for s in SEEDS], metadata=[{"label": f"c{s % 2}"} for s in SEEDS]
        )
    assert ids == [500 + s for s in SEEDS]
    codes = encoder.encode([image_bytes(s) for s in SEEDS])
    return url, encoder, ids, codes, paths


def _pairs(result: SearchResult) -> list[tuple[int, int]]:
    return [(h.id, h.distance) for h in result]


def test_search_takes_paths_bytes_and_pil_images_and_is_exact(filled):
    url, encoder, ids, codes, paths = filled
    q = encoder.encode([image_bytes(3)])
    want = oracle_knn(q, ids, codes, 4)
    with Client(url) as client:
        pil = Image.open(paths[3])
        results = [client.search(x, k=4) for x in (paths[3], str(paths[3]), image_bytes(3), pil)]
    for r in results:
        assert isinstance(r, SearchResult) and r.bits == 32
        assert _pairs(r) == want and all(isinstance(h, Hit) for h in r)
    assert results[0][0].metadata == {"label": f"c{want[0][0] % 2}"}


def test_filter_offset_batch_similar_and_codes(filled):
    url, encoder, ids, codes, paths = filled
    even = [i for i in ids if i % 2 == 0]
    even_codes = codes[[ids.index(i) for i in even]]
    q = encoder.encode([image_bytes(s) for s in (1, 6)])
    with Client(url) as client:
        r = client.search(paths[1], k=3, filter={"label": "c0"})
        assert _pairs(r) == oracle_knn(q[:1], even, even_codes, 3)
        page = client.search(paths[1], k=3, offset=3)
        assert _pairs(page) == oracle_knn(q[:1], ids, codes, 6)[3:6]
        batch = client.search_batch([paths[1], paths[6]], k=5)
        assert [_pairs(b) for b in batch] == [
            oracle_knn(q[i : i + 1], ids, codes, 5) for i in range(2)
        ]
        by_code = client.search_codes(q, k=5)  # a uint8 array
        assert [_pairs(b) for b in by_code] == [_pairs(b) for b in batch]
        assert _pairs(client.search_codes(q[1].tobytes().hex(), k=5)[0]) == _pairs(batch[1])
        sim = client.similar(503, k=20)
        others = [i for i in ids if i != 503]
        other_codes = codes[[ids.index(i) for i in others]]
        assert _pairs(sim) == oracle_knn(codes[3:4], others, other_codes, 20)
        within = client.search(paths[6], radius=4)
        assert all(h.distance <= 4 for h in within) and 506 in within.ids


def test_items_get_upsert_list_delete_and_info(filled):
    url, encoder, ids, codes, paths = filled
    with Client(url, api_key=KEY) as client:
        item = client.get(504)
        assert isinstance(item, Item) and item.code_bytes == codes[4].tobytes()
        assert client.upsert(504, metadata={"label": "renamed"}) is False
        assert client.get(504).metadata == {"label": "renamed"}
        assert client.upsert(777, image=Image.open(paths[7])) is True
        assert client.get(777).code == codes[7].tobytes().hex()
        page = client.list(limit=4)
        assert [i.id for i in page.items] == ids[:4] and page.next_after == ids[3]
        assert [i.id for i in client.iter_items(page_size=3)] == [*ids, 777]
        client.delete(777)
        assert client.info()["items"] == len(ids)
        with pytest.raises(ApiError) as err:
            client.get(777)
        assert err.value.status_code == 404 and "777" in err.value.detail


def test_errors_carry_the_servers_status_and_detail(filled, server):
    url, *_ = filled
    with Client(url) as client:  # no key: reads work, writes are refused
        with pytest.raises(ApiError) as err:
            client.add(image_bytes(1))
        assert err.value.status_code == 401 and "X-API-Key" in err.value.detail
        with pytest.raises(ApiError) as err:
            client.search_codes("abcd")
        assert err.value.status_code == 422 and "8 hex digits" in err.value.detail
        assert "HTTP 422" in str(err.value)
        with pytest.raises(ApiError) as err:
            client.similar(424242)
        assert err.value.status_code == 404
        with pytest.raises(ClientError, match="expected a path"):
            client.search(12345)
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=2) as down,
        pytest.raises(ClientError, match="cannot reach"),
    ):
        down.info()


def test_hashkd_query_prints_the_hits(filled, capsys):
    from hashkd.cli import main

    url, encoder, ids, codes, paths = filled
    q = encoder.encode([image_bytes(s) for s in (2, 5)])
    assert main(["query", url, str(paths[2]), str(paths[5]), "--k", "3", "--print-json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in out] == [str(paths[2]), str(paths[5])]
    for row, doc in enumerate(out):
        got = [(h["id"], h["distance"]) for h in doc["results"]]
        assert got == oracle_knn(q[row : row + 1], ids, codes, 3)
    flt = json.dumps({"label": "c1"})
    assert main(["query", url, str(paths[2]), "--k", "2", "--filter", flt]) == 0
    text = capsys.readouterr().out.splitlines()
    odd = [i for i in ids if i % 2 == 1]
    want = oracle_knn(q[:1], odd, codes[[ids.index(i) for i in odd]], 2)
    assert text[0].startswith(str(paths[2])) and "2 hits" in text[0]
    assert [(int(line.split()[1]), int(line.split()[2])) for line in text[2:]] == want
    assert main(["query", url, str(paths[2]), "--filter", "{bad"]) == 2
    assert "--filter" in capsys.readouterr().err
    assert main(["query", url, str(paths[2]), "--k", "2", "--filter", '{"x": [[1]]}']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hashkd: error:") and "HTTP 422" in err and "\n" not in err
    assert main(["query", url, str(Path(paths[0]).with_name("missing.png"))]) == 2


def test_client_does_not_import_the_server_packages():
    import ast

    source = Path(__file__).resolve().parents[1] / "hashkd" / "client.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"service", "indexes", "torch"}
