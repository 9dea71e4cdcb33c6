"""Crash test: kill -9 a real server while several clients add items, restart, check nothing
acknowledged was lost and the index loads and finds every acknowledged item."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import TINY_VIT
from tests.test_service_support import (
    build_artifact,
    free_port,
    image_bytes,
    start_server,
    stop_server,
)

CLIENTS = 4
KILL_AFTER_ACKS = 40


@pytest.mark.slow  # three server starts: about a minute on an idle 2-core machine, more under load
def test_acknowledged_adds_survive_kill_9(tmp_path):
    model = build_artifact(tmp_path / "vit32", TINY_VIT, 32, 0)
    store = tmp_path / "store"
    args = [
        "--model",
        str(model),
        "--store",
        str(store),
        "--snapshot-every",
        "7",
        "--max-wait-seconds",
        "0.001",
    ]
    port = free_port()
    proc = start_server(args, port, tmp_path / "server1.log")
    acked: dict[int, int] = {}  # id -> image seed
    lock = threading.Lock()
    stop = threading.Event()
    errors_after_kill = []

    def client(worker: int) -> None:
        seed = 1000 * worker
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            while not stop.is_set():
                seed += 1
                try:
                    r = c.post(
                        "/v1/items",
                        files=[("images", ("i.png", image_bytes(seed), "image/png"))],
                        data={"metadata": f'[{{"seed": {seed}}}]'},
                    )
                except httpx.HTTPError as exc:
                    errors_after_kill.append(exc)
                    return
                if r.status_code == 201:
                    with lock:
                        acked[r.json()["ids"][0]] = seed

    threads = [threading.Thread(target=client, args=(w,)) for w in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-way: clients are still sending
        proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        stop_server(proc)
    assert len(acked) >= KILL_AFTER_ACKS, "the clients were too slow to reach the kill point"

    port2 = free_port()
    proc2 = start_server(args, port2, tmp_path / "server2.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port2}", timeout=30) as c:
            info = c.get("/v1/info").json()
            assert info["index"]["recovery"] in ("snapshot", "snapshot+replay", "rebuild")
            assert info["index"]["size"] == info["items"] >= len(acked)
            for item_id, seed in acked.items():
                item = c.get(f"/v1/items/{item_id}")
                assert item.status_code == 200, (item_id, item.text)
                assert item.json()["metadata"] == {"seed": seed}
            for item_id, seed in list(acked.items())[:: max(1, len(acked) // 12)]:
                hits = c.post(
                    "/v1/search",
                    params={"radius": 0},
                    files={"image": ("q.png", image_bytes(seed), "image/png")},
                ).json()["results"]
                assert item_id in [h["id"] for h in hits], (item_id, hits)
            # The recovered server keeps working.
            r = c.post("/v1/items", files=[("images", ("n.png", image_bytes(5), "image/png"))])
            assert r.status_code == 201 and r.json()["ids"][0] > max(acked)
    finally:
        stop_server(proc2)
    # A clean stop (SIGTERM) runs the lifespan shutdown and leaves a snapshot that is current: the next start needs no replay.
    port3 = free_port()
    proc3 = start_server(args, port3, tmp_path / "server3.log")
    try:
        info = httpx.get(f"http://127.0.0.1:{port3}/v1/info", timeout=30).json()
        assert info["index"]["recovery"] == "snapshot"
        assert info["items"] == info["index"]["size"] >= len(acked) + 1
    finally:
        stop_server(proc3)
