"""``hashkd add`` / ``Client.add_folder`` against a live server (uvicorn in a thread).

Oracles: the generated folder's own listing (every file recorded once, by its path relative to
the folder), the model's code of each file (the stored code), the server's item count (no
duplicates after resumes, retries and lost answers) and the waits the server asked for.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hashkd import client as client_module
from hashkd.cli import main
from hashkd.client import AddReport, Client, image_sources
from hashkd.runtime import Encoder
from service import Settings
from tests.conftest import TINY_VIT
from tests.photos import make_photos
from tests.test_service_support import build_artifact, serve_in_thread


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, encoder) of a live server holding no items at start."""
    root = tmp_path_factory.mktemp("add")
    model = build_artifact(root / "vit32", TINY_VIT, 32, 0)
    settings = Settings(model=model, store=root / "store", max_images=8, batching=False)
    with serve_in_thread(settings) as url:
        yield url, Encoder.from_artifact(model, backend="torch")


def _by_path(url: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    with Client(url) as c:
        for item in c.iter_items():
            out.setdefault(item.metadata.get("path"), []).append(item.id)
    return out


def test_image_sources_walk_folders_and_keep_files_as_given(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    listed = make_photos(root, {"b": 2, "a": 1})
    (root / "a" / ".hidden.jpg").write_bytes(b"x")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    got = image_sources([root, Path("photos/b/img 01.jpg")])
    assert [rec for _, rec in got] == [*listed, "photos/b/img 01.jpg"]
    assert [f for f, _ in got][0] == root / listed[0]
    with pytest.raises(ValueError, match="does not exist: expected an image file or a folder"):
        image_sources([tmp_path / "missing"])


def test_add_folder_records_paths_resumes_and_skips_refused_files(server, tmp_path):
    url, encoder = server
    root = tmp_path / "trip"
    listed = make_photos(root, {"day1": 6, "day2": 5}, seed=1)
    (root / "day2" / "broken.jpg").write_text("this is not a photo")
    with Client(url) as client:
        report = client.add_folder(root, batch_size=4)
        assert isinstance(report, AddReport)
        assert sorted(report.added) == sorted(listed) and report.skipped == []
        assert list(report.failed) == ["day2/broken.jpg"]
        assert "not a recognised image" in report.failed["day2/broken.jpg"]
        for rec, item_id in report.added.items():
            item = client.get(item_id)
            assert item.metadata == {"path": rec} and item.has_thumbnail
            assert item.code_bytes == encoder.encode([root / rec])[0].tobytes()
        # an interrupted run leaves some stored: the next run adds exactly the others
        for rec in listed[2:5]:
            client.delete(report.added[rec])
        again = client.add_folder(root, batch_size=4)
        assert sorted(again.added) == sorted(listed[2:5])
        assert sorted(again.skipped) == sorted(set(listed) - set(listed[2:5]))
        assert client.add_folder(root).added == {}
    stored = _by_path(url)
    assert all(len(stored[rec]) == 1 for rec in listed)  # each file stored once


class Flaky(httpx.BaseTransport):
    """Forwards to the server; answers the first ``busy`` adds 503 with Retry-After, then
    performs ``lost`` adds but drops their answers (a cut connection)."""

    def __init__(self, busy: int = 0, lost: int = 0, retry_after: str = "2.5") -> None:
        self.inner = httpx.HTTPTransport()
        self.busy, self.lost, self.retry_after = busy, lost, retry_after
        self.adds = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_add = request.method == "POST" and request.url.path == "/v1/items"
        if is_add:
            self.adds += 1
            if self.busy:
                self.busy -= 1
                return httpx.Response(
                    503,
                    json={"detail": "the server is busy"},
                    headers={"Retry-After": self.retry_after},
                )
        response = self.inner.handle_request(request)
        if is_add and self.lost:
            self.lost -= 1
            response.read()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_a_503_is_retried_after_retry_after_and_a_lost_answer_not_duplicated(
    server, tmp_path, monkeypatch
):
    url, _ = server
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    root = tmp_path / "busy"
    listed = make_photos(root, {"x": 3}, seed=2)
    flaky = Flaky(busy=2)
    with Client(url, transport=flaky) as client:
        report = client.add_folder(root, batch_size=8)
    assert sorted(report.added) == listed and flaky.adds == 3
    assert waits == [2.5, 2.5]  # the server's Retry-After, each time
    root2 = tmp_path / "lost"
    listed2 = make_photos(root2, {"y": 3}, seed=3)
    waits.clear()
    flaky = Flaky(lost=1)
    with Client(url, transport=flaky) as client:
        report = client.add_folder(root2, batch_size=8)
    # the add went through, its answer did not: the retry found the files stored
    assert sorted(report.added) == listed2 and report.skipped == [] and flaky.adds == 1
    assert waits == [1.0]
    stored = _by_path(url)
    assert all(len(stored[rec]) == 1 for rec in listed2)
    for rec, item_id in report.added.items():
        assert stored[rec] == [item_id]
    # giving up after the retries raises the server's error
    with Client(url, transport=Flaky(busy=5, retry_after="0")) as client:
        make_photos(tmp_path / "never", {"z": 1}, seed=4)
        with pytest.raises(client_module.ApiError, match="the server is busy"):
            client.add_folder(tmp_path / "never", retries=2)


def test_hashkd_add_command(server, tmp_path, capsys):
    url, _ = server
    root = tmp_path / "cli"
    listed = make_photos(root, {"p": 3}, seed=5)
    assert main(["add", url, str(root), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == "added 3 images, skipped 0 already stored"
    assert main(["add", url, str(root), "--no-progress", "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.strip() == "added 0 images, skipped 3 already stored"
    assert all(len(_by_path(url)[rec]) == 1 for rec in listed)
    assert main(["add", url, str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope' does not exist" in err[0]
