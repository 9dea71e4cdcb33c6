"""How the embedded service's costs grow with the collection: 100 k, 1 M and 10 M items in one run.

For each size, a fresh store is served by ``python -m hashkd serve`` (a tiny 64-bit student
exported to ONNX: the lean server a deployment runs), filled with random 64-bit codes through
``POST /v1/items/codes`` in chunks (metadata ``{"labels": [c], "shard": s}``: ``labels`` 10 %
selective, ``shard`` 0.1 %), then measured from a client process on loopback:

* bulk-load rate (codes/s end to end) and the server's resident memory (VmRSS);
* single-code search p50/p99 (``/v1/search/codes``, k = 10), and filtered search p50 at 10 %
  and 0.1 % selectivity -- every checked answer equals a brute force over the same codes;
* single-item add p50 (one code per request);
* search p50/p99 while another thread adds one code every 100 ms (10 adds/s);
* ``kill -9`` of the server, then the time until a restarted server answers ``/readyz``.

It prints one table with the ratio of the largest size to the smallest per column, and writes
``results.json`` in ``--out`` (default ``bench-scale`` in the working directory)::

    python scripts/bench_scale.py --sizes 100000,1000000,10000000 --out runs/bench-scale

Timings need a quiet machine: run nothing else heavy beside it (docs/bench-service.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_service, beside this file
BITS = 64
CHUNK = 100_000
CLASSES = 10
SHARDS = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def build_onnx_student(directory: Path) -> Path:
    """``bench_service``'s tiny random-init student at 64 bits, exported to ONNX (no torch in
    the server)."""
    from bench_service import build_student

    from hashkd.export import export_model

    out = directory / "student_onnx"
    export_model(build_student(directory / "student", BITS), "onnx", out)
    return out


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


class Server:
    def __init__(self, model: Path, store: Path, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HASHKD_MAX_SEARCH_WORK": "100000",
            "HASHKD_MAX_METADATA_BYTES": str(64 << 20),  # 100,000 items of metadata a request
        }
        argv = [sys.executable, "-m", "hashkd", "serve", "--model", str(model)]
        argv += ["--store", str(store), "--port", str(self.port), "--no-access-log"]
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 600) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the server did not become ready")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)
        self.log.close()


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, n)
    shards = rng.integers(0, SHARDS, n)
    return codes, labels, shards


def bulk_load(client: httpx.Client, codes, labels, shards) -> float:
    """Codes/s of a loader that prepares the next chunk's files while the server adds the
    current one (one request in flight, as a streaming bulk client would)."""

    def files(s: int) -> dict:
        meta = [
            {"labels": [int(c)], "shard": int(h)}
            for c, h in zip(labels[s : s + CHUNK], shards[s : s + CHUNK], strict=True)
        ]
        return {
            "codes": ("c.npy", npy(codes[s : s + CHUNK])),
            "metadata": ("m.json", json.dumps(meta).encode()),
        }

    start = time.perf_counter()
    with ThreadPoolExecutor(1) as prepare:
        ahead = prepare.submit(files, 0)
        for s in range(0, len(codes), CHUNK):
            body = ahead.result()
            if s + CHUNK < len(codes):
                ahead = prepare.submit(files, s + CHUNK)
            client.post("/v1/items/codes", files=body, timeout=600).raise_for_status()
    return len(codes) / (time.perf_counter() - start)


def brute_top(codes: np.ndarray, keep: np.ndarray | None, q: np.ndarray, k: int) -> list:
    from indexes import hamming_scan

    ids = np.arange(len(codes)) if keep is None else np.flatnonzero(keep)
    db = codes if keep is None else codes[ids]
    dist, pos = hamming_scan.knn_scan(db, q[None, :], k)
    return [(int(ids[p]), int(d)) for d, p in zip(dist[0], pos[0], strict=True) if p >= 0]


def search(client: httpx.Client, q: np.ndarray, k: int = 10, flt: dict | None = None) -> list:
    body: dict = {"codes": [q.tobytes().hex()], "k": k}
    if flt:
        body["filter"] = flt
    r = client.post("/v1/search/codes", json=body, timeout=60)
    r.raise_for_status()
    return [(h["id"], h["distance"]) for h in r.json()["results"][0]]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def measure(size: int, model: Path, work: Path, seed: int, repeats: int) -> dict:
    store = work / f"store-{size}"
    log = work / f"server-{size}.log"
    codes, labels, shards = make_data(size, seed)
    rng = np.random.default_rng(seed + 1)
    queries = rng.integers(0, 256, (repeats, BITS // 8), dtype=np.uint8)
    server = Server(model, store, log)
    row: dict = {"items": size}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base) as client:
            row["bulk_codes_per_s"] = round(bulk_load(client, codes, labels, shards))
            # every answer checked on a few queries, then timed
            for q in queries[:3]:
                assert search(client, q) == brute_top(codes, None, q, 10)
                assert search(client, q, flt={"labels": 3}) == brute_top(codes, labels == 3, q, 10)
                assert search(client, q, flt={"shard": 7}) == brute_top(codes, shards == 7, q, 10)
            it = iter(queries)
            plain = timed(lambda: search(client, next(it)), repeats)
            row["search_p50_ms"], row["search_p99_ms"] = pct(plain, 50), pct(plain, 99)
            it = iter(queries)
            row["filter10_p50_ms"] = pct(
                timed(lambda: search(client, next(it), flt={"labels": 3}), repeats // 2), 50
            )
            it = iter(queries)
            row["filter01_p50_ms"] = pct(
                timed(lambda: search(client, next(it), flt={"shard": 7}), repeats // 2), 50
            )
            one = rng.integers(0, 256, (1, BITS // 8), dtype=np.uint8)
            adds = timed(
                lambda: client.post(
                    "/v1/items/codes", files={"codes": ("c.npy", npy(one))}
                ).raise_for_status(),
                50,
            )
            row["add_p50_ms"] = pct(adds, 50)
            row["search_under_adds_p50_ms"], row["search_under_adds_p99_ms"] = under_adds(
                server.base, queries, repeats
            )
            acknowledged = client.get("/v1/info").json()["items"]
        row["rss_mb"] = round(rss_mb(server.proc.pid), 1)
        server.kill9()
        server.log.close()
        server = Server(model, store, log)
        row["restart_s"] = round(server.wait_ready(), 2)
        with httpx.Client(base_url=server.base) as client:  # every acknowledged add survived
            assert client.get("/v1/info").json()["items"] == acknowledged
    finally:
        server.stop()
    return row


def under_adds(base: str, queries: np.ndarray, repeats: int) -> tuple[float, float]:
    """Search back to back while another thread adds one code every 100 ms."""
    stop = threading.Event()

    def adder() -> None:
        rng = np.random.default_rng(99)
        with httpx.Client(base_url=base) as c:
            while not stop.is_set():
                one = rng.integers(0, 256, (1, BITS // 8), dtype=np.uint8)
                c.post("/v1/items/codes", files={"codes": ("c.npy", npy(one))}).raise_for_status()
                stop.wait(0.1)

    t = threading.Thread(target=adder)
    t.start()
    try:
        with httpx.Client(base_url=base) as client:
            it = iter(queries)
            lat = timed(lambda: search(client, next(it)), repeats)
    finally:
        stop.set()
        t.join()
    return pct(lat, 50), pct(lat, 99)


COLUMNS = [
    ("bulk_codes_per_s", "bulk load (codes/s)"),
    ("rss_mb", "server RSS (MB)"),
    ("restart_s", "kill -9 -> ready (s)"),
    ("search_p50_ms", "search p50 (ms)"),
    ("search_p99_ms", "search p99 (ms)"),
    ("filter10_p50_ms", "filter 10 % p50 (ms)"),
    ("filter01_p50_ms", "filter 0.1 % p50 (ms)"),
    ("add_p50_ms", "single add p50 (ms)"),
    ("search_under_adds_p50_ms", "search p50 under adds (ms)"),
    ("search_under_adds_p99_ms", "search p99 under adds (ms)"),
]


def table(rows: list[dict]) -> str:
    head = "| items | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---:|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = [f"{row['items']:,}"] + [str(row.get(key, "")) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        ratios = [f"{last[key] / first[key]:.2f}x" if first.get(key) else "" for key, _ in COLUMNS]
        lines.append(
            f"| ratio {last['items']:,} / {first['items']:,} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default="100000,1000000,10000000", help="comma-separated item counts"
    )
    ap.add_argument("--repeats", type=int, default=200, help="timed searches per measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-scale"), help="results folder")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.out))
    started = time.time()
    load_before = os.getloadavg()
    model = build_onnx_student(work)
    rows = []
    for size in sizes:
        rows.append(measure(size, model, work, args.seed, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": " ".join(["python", "scripts/bench_scale.py", *(argv or sys.argv[1:])]),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"wall time {result['wall_s']} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
