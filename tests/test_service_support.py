"""Helpers shared by the service tests (tiny real model artifacts, images, oracles, servers).

No tests live here; the other ``test_service*`` / ``test_browser*`` modules import it.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.conftest import REPO, TINY_CNN, TINY_VIT


def build_artifact(directory: Path, spec: dict, bits: int, seed: int) -> Path:
    """A random-init tiny model artifact (32 px) written with save_artifact."""
    import torch

    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(seed)
    model = build_model(ModelConfig(bits=bits, img_size=32, role="student", **spec))
    return save_artifact(model, directory)


def build_artifacts(root: Path) -> dict[str, Path]:
    """vit32 (query model), cnn32 (a different 32-bit database model), vit16 (other length)."""
    return {
        "vit32": build_artifact(root / "vit32", TINY_VIT, 32, 0),
        "cnn32": build_artifact(root / "cnn32", TINY_CNN, 32, 1),
        "vit16": build_artifact(root / "vit16", TINY_VIT, 16, 2),
    }


def image_bytes(seed: int, size: int = 40, fmt: str = "PNG") -> bytes:
    """A structured test image (colour blocks + gradient), different for every seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    arr = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.float32))
    ramp = np.linspace(0, rng.uniform(-80, 80), size, dtype=np.float32)[None, :, None]
    arr = np.clip(arr + ramp, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def hamming(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances (nq x nd) between packed uint8 codes: the test oracle."""
    q = np.unpackbits(np.atleast_2d(query), axis=1).astype(np.int32)
    d = np.unpackbits(np.atleast_2d(db), axis=1).astype(np.int32)
    return (q[:, None, :] != d[None, :, :]).sum(axis=2)


def oracle_knn(
    qcode: np.ndarray, ids: list[int], codes: np.ndarray, k: int
) -> list[tuple[int, int]]:
    """(id, distance) of the k nearest by brute force, nearest first, ties by ascending id."""
    dist = hamming(qcode, codes)[0]
    pairs = sorted(zip(dist.tolist(), ids, strict=True))
    return [(i, d) for d, i in pairs[:k]]


def oracle_range(
    qcode: np.ndarray, ids: list[int], codes: np.ndarray, radius: int
) -> list[tuple[int, int]]:
    dist = hamming(qcode, codes)[0]
    pairs = sorted((d, i) for d, i in zip(dist.tolist(), ids, strict=True) if d <= radius)
    return [(i, d) for d, i in pairs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: list[str], port: int, log_path: Path, env: dict | None = None
) -> subprocess.Popen:
    """``python -m service`` on 127.0.0.1:port; returns once /readyz answers 200."""
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        **(env or {}),
    }
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=str(REPO),
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {log_path.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_in_thread(settings: Any) -> Iterator[str]:
    """A real uvicorn server of ``create_app(settings)`` in a thread; yields its base URL."""
    import uvicorn

    from service import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
