"""README's "Search your own photos", run as written on a generated photo folder.

The commands are read from README's block (so the test follows the README), run in a folder
holding ``photos/``, with 1 epoch and a small batch in place of the training lengths, a small
export check and a free port. The oracle of every hit: brute force over the code set (the
student's code of the query file, ONNX as served, against the teacher's codes), and the
folder's own listing for every hit's path. The same hits must come back through
``hashkd query`` (the CLI), ``POST /v1/search`` (the API) and ``hashkd.client.Client``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from hashkd.cli import main
from hashkd.client import Client
from tests.conftest import REPO
from tests.photos import make_photos
from tests.test_service_support import free_port, hamming

HEADING = "## Search your own photos"
K = 5


def readme_commands() -> list[list[str]]:
    """The ``hashkd`` commands of README's walkthrough block, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(HEADING) :]
    block = section[section.index("```bash\n") + len("```bash\n") :]
    block = block[: block.index("```")]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("hashkd ")]
    assert [c[1] for c in commands] == [
        "train-teacher",
        "distill",
        "export",
        "encode",
        "serve",
        "query",
        "add",
    ], "README's walkthrough changed: update this test"
    return commands


def _with_url(argv: list[str], url: str) -> list[str]:
    return [url if a.startswith("http://127.0.0.1:") else a for a in argv]


def _query_hits(text: str) -> list[tuple[int, int, dict]]:
    """(id, distance, metadata) of the hits ``hashkd query`` prints (``rank id dist meta``)."""
    hits = []
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].isdigit():
            hits.append((int(parts[1]), int(parts[2]), json.loads(parts[3])))
    return hits


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server did not become ready: {log.read_text()[-3000:]}")


def test_readme_walkthrough_answers_a_query_with_the_photos_paths(tmp_path, monkeypatch, capsys):
    from hashkd.codes import CodeSet
    from hashkd.runtime import Encoder

    commands = readme_commands()
    listed = make_photos(
        tmp_path / "photos", {"cats": 14, "dogs": 14, "owls": 14}, size=48, name="{:03d}.jpg"
    )
    query_file = commands[5][3]  # photos/cats/001.jpg, as README names it
    assert query_file.removeprefix("photos/") in listed
    monkeypatch.chdir(tmp_path)
    tiny = {
        "train-teacher": ["--epochs", "1", "--batch-size", "8", "--no-progress"],
        "distill": ["--epochs", "1", "--batch-size", "8", "--no-progress"],
        "export": ["--check-images", "4"],
        "encode": ["--no-progress"],
    }
    for argv in commands[:4]:  # teacher, student, export, encode: in this process
        assert main([*argv[1:], *tiny[argv[1]]]) == 0, argv
    codes = CodeSet.load("codes/photos")
    assert codes.paths == listed and codes.ids.tolist() == list(range(len(listed)))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [a if a != "8000" else str(port) for a in commands[4]]
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hashkd", *serve[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )
        _wait_ready(url, proc, log)
        return proc

    def stop(proc: subprocess.Popen) -> None:
        proc.terminate()
        proc.wait(timeout=30)

    # the oracle: the served student's code of the query file against the teacher's codes
    qcode = Encoder.from_artifact("runs/student_onnx", backend="onnx").encode([query_file])
    order = sorted(zip(hamming(qcode, codes.codes)[0].tolist(), codes.ids.tolist(), strict=True))
    want = [(i, d, listed[i]) for d, i in order[:K]]

    proc = start()
    try:
        capsys.readouterr()
        assert main(_with_url(commands[5], url)[1:]) == 0  # hashkd query ... --k 5
        cli = [(i, d, m["path"]) for i, d, m in _query_hits(capsys.readouterr().out)]
        assert cli == want
        with open(query_file, "rb") as fh:
            body = httpx.post(
                f"{url}/v1/search", params={"k": K}, files={"image": ("q.jpg", fh.read())}
            ).json()
        api = [(h["id"], h["distance"], h["metadata"]["path"]) for h in body["results"]]
        assert api == want
        with Client(url) as client:
            hits = client.search(query_file, k=K)
            assert [(h.id, h.distance, h.metadata["path"]) for h in hits] == want
            # the paths name the files the codes were made from; their labels are their folders
            classes = sorted({p.split("/")[0] for p in listed})
            for h in hits:
                assert classes[h.metadata["labels"][0]] == h.metadata["path"].split("/")[0]
                assert client.get(h.id).has_thumbnail
            assert client.info()["items"] == len(listed)
        # `hashkd add` of the same folder: every photo is stored under the same path already
        assert main([*_with_url(commands[6], url)[1:], "--no-progress"]) == 0
        assert (
            capsys.readouterr()
            .out.strip()
            .endswith(f"added 0 images, skipped {len(listed)} already stored")
        )
    finally:
        stop(proc)
    proc = start()  # a restart loads nothing twice
    try:
        info = httpx.get(f"{url}/v1/info").json()
        assert info["items"] == len(listed) and info["codes"]["added"] == 0
        with Client(url) as client:
            hits = client.search(query_file, k=K)
        assert [(h.id, h.distance, h.metadata["path"]) for h in hits] == want
    finally:
        stop(proc)
    assert np.array_equal(CodeSet.load("codes/photos").codes, codes.codes)
