"""Resident memory and start-up time of ``hashkd serve`` with an exported student.

Starts ``python -m hashkd serve --model MODEL_DIR`` from the source tree TREE (a checkout of
this repository; PYTHONPATH=TREE, so two checkouts can be compared with one environment), waits
for ``/readyz``, and reports the time to ready, the resident memory (VmRSS) and whether libtorch
was mapped into the process::

    python scripts/measure_serve_memory.py . runs/student_onnx 3
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_once(tree: str, model: str) -> dict[str, object]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "hashkd", "serve", "--model", model]
    argv += ["--store", tempfile.mkdtemp(), "--host", "127.0.0.1", "--port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - start
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "ready_s": round(ready_s, 2),
        "rss_mb": round(int(rss_kb.split()[1]) / 1024, 1),
        "libtorch_loaded": "libtorch" in maps,
    }


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    tree, model = str(Path(sys.argv[1]).resolve()), str(Path(sys.argv[2]).resolve())
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    runs = [measure_once(tree, model) for _ in range(repeats)]
    print(json.dumps({"tree": tree, "model": model, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
