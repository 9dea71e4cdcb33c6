"""``hashkd serve --codes DIR``: an offline code set becomes the service's items at start-up.

Oracles: the generated folder's own listing (id i is the i-th file), the code set's codes
(each stored code byte for byte), brute-force Hamming ranking for the searches, and the
thumbnail a file gives through the service's own helpers.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from hashkd.codes import CodeSet
from hashkd.encoding import encode_data
from hashkd.runtime import Encoder
from service import Settings, create_app
from service.codeset_loader import CodesetLoadError, thumbnail_of
from tests.conftest import REPO, TINY_CNN, TINY_VIT
from tests.photos import make_photos
from tests.test_service_support import build_artifact, hamming


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("m") / "vit32", TINY_VIT, 32, 0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("data") / "photos"
    return root, make_photos(root)


@pytest.fixture(scope="module")
def codeset_dir(model, photos, tmp_path_factory) -> Path:
    root, _ = photos
    out = tmp_path_factory.mktemp("codes") / "db"
    return encode_data(model, str(root), progress=False).save(out)


def _settings(model, store, codes, **kw) -> Settings:
    return Settings(model=model, store=store, codes=codes, batching=False, **kw)


def _items(client) -> dict[int, dict]:
    body = client.get("/v1/items", params={"limit": 1000}).json()
    return {int(it["id"]): it for it in body["items"]}


def test_codes_load_at_start_up_with_paths_labels_and_thumbnails(
    model, photos, codeset_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr("service.codeset_loader.CHUNK", 4)  # several chunks
    root, listed = photos
    codes = CodeSet.load(codeset_dir)
    with TestClient(create_app(_settings(model, tmp_path / "store", codeset_dir))) as client:
        info = client.get("/v1/info").json()
        assert info["items"] == len(listed)
        assert info["codes"]["added"] == len(listed) and info["codes"]["already_stored"] == 0
        assert info["codes"]["thumbnails"] == len(listed) and info["codes"]["unreadable"] == 0
        items = _items(client)
        assert sorted(items) == list(range(len(listed)))
        for pos, item_id in enumerate(codes.ids.tolist()):
            item = items[item_id]
            assert item["metadata"]["path"] == listed[item_id]
            assert item["metadata"]["labels"] == np.flatnonzero(codes.labels[pos]).tolist()
            assert bytes.fromhex(item["code"]) == codes.codes[pos].tobytes()
            assert item["has_thumbnail"]
        # the thumbnail is the photo: the service's helpers on the file give the same bytes
        for item_id in (0, len(listed) - 1):
            got = client.get(f"/v1/items/{item_id}/thumbnail")
            assert got.status_code == 200
            assert got.content == thumbnail_of(str(root / listed[item_id]), 96)
            with Image.open(io.BytesIO(got.content)) as thumb:
                assert thumb.size == (40, 40)  # the 40-px photos are never upscaled
        # a search by a photo answers with the photos' paths, ranked as brute force ranks them
        q = 6
        qcode = Encoder.from_artifact(model).encode([root / listed[q]])
        body = client.post(
            "/v1/search",
            params={"k": 5},
            files={"image": ("q.jpg", (root / listed[q]).read_bytes(), "image/jpeg")},
        ).json()
        want = sorted(zip(hamming(qcode, codes.codes)[0].tolist(), codes.ids.tolist(), strict=True))
        hits = body["results"]
        assert [(h["distance"], h["id"]) for h in hits] == [tuple(p) for p in want[:5]]
        assert [h["metadata"]["path"] for h in hits] == [listed[h["id"]] for h in hits]
        assert listed[q] in [h["metadata"]["path"] for h in hits if h["distance"] == 0]


def test_a_restart_adds_nothing_and_deleted_items_stay_deleted(model, codeset_dir, tmp_path):
    store = tmp_path / "store"
    n = len(CodeSet.load(codeset_dir))
    with TestClient(create_app(_settings(model, store, codeset_dir))) as client:
        assert client.get("/v1/info").json()["items"] == n
        assert client.delete("/v1/items/2").status_code == 200
    with TestClient(create_app(_settings(model, store, codeset_dir))) as client:
        info = client.get("/v1/info").json()
        assert info["items"] == n - 1 and info["index"]["size"] == n - 1
        assert info["codes"]["skipped"] and info["codes"]["added"] == 0
        assert client.get("/v1/items/2").status_code == 404


def test_a_load_cut_off_half_way_is_completed_and_a_conflict_refused(model, codeset_dir, tmp_path):
    full = CodeSet.load(codeset_dir)
    half = CodeSet(full.codes[:5], full.ids[:5], full.labels[:5], dict(full.meta), full.paths[:5])
    half_dir = half.save(tmp_path / "half")
    store = tmp_path / "store"
    with TestClient(create_app(_settings(model, store, half_dir))) as client:
        assert client.get("/v1/info").json()["items"] == 5
    with TestClient(create_app(_settings(model, store, codeset_dir))) as client:
        info = client.get("/v1/info").json()
        assert info["items"] == len(full)
        assert info["codes"]["added"] == len(full) - 5 and info["codes"]["already_stored"] == 5
        assert info["codes"]["thumbnails"] == len(full) - 5  # made only for the new items
    # the same id for another file: refused at start-up, nothing added
    other = CodeSet(full.codes, full.ids, full.labels, dict(full.meta), list(full.paths))
    other.paths[3], other.paths[4] = other.paths[4], other.paths[3]
    with (
        pytest.raises(CodesetLoadError, match="already holds item 3 for another image"),
        TestClient(create_app(_settings(model, store, other.save(tmp_path / "other")))),
    ):
        pass
    # `hashkd serve` says so in one log line, without a traceback, and exits non-zero
    args = ["--model", str(model), "--store", str(store), "--codes", str(tmp_path / "other")]
    done = _serve(*args, "--port", "0")
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "already holds item 3 for another image" in errors[0], errors


def test_thumbnails_need_readable_files_and_data_root_points_at_them(
    model, photos, codeset_dir, tmp_path
):
    root, listed = photos
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    (moved / listed[1]).unlink()  # a file gone since it was encoded
    codes = CodeSet.load(codeset_dir)
    codes.meta["path_root"] = str(tmp_path / "nowhere")
    unreadable = codes.save(tmp_path / "elsewhere")
    with TestClient(create_app(_settings(model, tmp_path / "s1", unreadable))) as client:
        info = client.get("/v1/info").json()
        assert info["items"] == len(listed) and info["codes"]["thumbnails"] == 0
        assert info["codes"]["unreadable"] == 0  # a missing root: no file is even tried
        assert not any(it["has_thumbnail"] for it in _items(client).values())
        assert _items(client)[0]["metadata"]["path"] == listed[0]
    settings = _settings(model, tmp_path / "s2", unreadable, data_root=moved)
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/info").json()
        assert info["codes"]["thumbnails"] == len(listed) - 1 and info["codes"]["unreadable"] == 1
        items = _items(client)
        assert [i for i, it in items.items() if not it["has_thumbnail"]] == [1]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hashkd", "serve", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_serve_refuses_a_bad_code_set_in_one_line_before_binding(model, tmp_path, codeset_dir):
    done = _serve("--model", str(model), "--store", str(tmp_path / "s"), "--codes", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a code set: expected a directory with codes.npy" in done.stderr
    wrong = CodeSet.load(codeset_dir)
    CodeSet(np.zeros((len(wrong), 2), np.uint8), wrong.ids).save(tmp_path / "w16")
    done = _serve(
        "--model", str(model), "--store", str(tmp_path / "s"), "--codes", str(tmp_path / "w16")
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "holds 16-bit codes but the database model makes 32-bit codes" in done.stderr
    # codes of another model of the same length: refused by the weights digest
    other = build_artifact(tmp_path / "cnn32", TINY_CNN, 32, 1)
    args = ["--model", str(other), "--store", str(tmp_path / "s"), "--codes", str(codeset_dir)]
    done = _serve(*args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "was made by another model (weights digest" in done.stderr
    assert f"than the database model {str(other)!r}" in done.stderr
    # the database model that made them is accepted with a query model of the same length
    with TestClient(
        create_app(_settings(other, tmp_path / "s2", codeset_dir, database_model=model))
    ) as client:
        assert client.get("/v1/info").json()["codes"]["added"] == len(CodeSet.load(codeset_dir))


def test_bulk_code_upload_takes_paths_json(model, photos, codeset_dir, tmp_path):
    _, listed = photos
    files = {
        name.split(".")[0]: (name, (codeset_dir / name).read_bytes())
        for name in ("codes.npy", "ids.npy", "labels.npy", "paths.json")
    }
    settings = Settings(model=model, store=tmp_path / "store", batching=False)
    with TestClient(create_app(settings)) as client:
        bad = {**files, "paths": ("paths.json", b'["only one"]')}
        r = client.post("/v1/items/codes", files=bad)
        assert (
            r.status_code == 422
            and f"paths has 1 entries for {len(listed)} codes" in r.json()["detail"]
        )
        r = client.post("/v1/items/codes", files={**files, "paths": ("p.json", b'{"a": 1}')})
        assert r.status_code == 422 and "JSON list of strings" in r.json()["detail"]
        assert client.get("/v1/info").json()["items"] == 0  # nothing added by a refused upload
        r = client.post("/v1/items/codes", files=files)
        assert r.status_code == 201
        items = _items(client)
        assert {i: it["metadata"]["path"] for i, it in items.items()} == dict(enumerate(listed))
        assert all("labels" in it["metadata"] for it in items.values())
        found = client.get("/v1/items/0/similar", params={"k": 3}).json()["results"]
        assert [h["metadata"]["path"] for h in found] == [listed[h["id"]] for h in found]


def test_cluster_mode_loads_the_codes_once_checking_the_stored_ids(
    model, photos, codeset_dir, tmp_path
):
    """No store folder to keep a marker in: every start checks which ids Milvus holds."""
    pytest.importorskip("milvus_lite")
    _, listed = photos
    uri = str(tmp_path / "items.db")
    settings = Settings(
        model=model,
        cluster=True,
        index_spec=f"milvus:{uri}",
        codes=codeset_dir,
        batching=False,
        thumbnail_store=tmp_path / "thumbnails",  # cluster mode keeps thumbnails only there
    )
    for run in (1, 2):
        with TestClient(create_app(settings)) as client:
            info = client.get("/v1/info").json()
            assert info["items"] == len(listed)
            assert info["codes"]["added"] == (len(listed) if run == 1 else 0)
            assert info["codes"]["already_stored"] == (0 if run == 1 else len(listed))
            item = client.get("/v1/items/4").json()
            assert item["metadata"]["path"] == listed[4] and item["has_thumbnail"]
