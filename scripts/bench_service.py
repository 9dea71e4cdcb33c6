"""Benchmark the search service: a real server on loopback, 1/4/16 concurrent clients,
micro-batching on and off, and the server's overhead above raw encode + search in-process.

    python scripts/bench_service.py --seconds 8 --items 10000 --out docs/bench-service.json

Goals (issue 6): at 16 clients batching gives >= 2x the throughput of no batching; at one
client the server's p50 is at most 5 ms above raw encode + search of the same images; no
errors. Every run is bounded in time (``--seconds`` per configuration) and request count.

Cluster mode (issue 16): with ``--milvus URI`` the script instead starts 1 and then
``--replicas N`` ``hashkd serve --cluster`` replicas against that Milvus server (one collection,
filled once through the first replica) and spreads the clients round-robin over the replicas::

    python scripts/bench_service.py --milvus http://127.0.0.1:19530 --replicas 2 --clients 16 \
        --seconds 20 --items 10000 --out bench-cluster.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.test_service_support import free_port, start_server, stop_server  # noqa: E402

TINY_STUDENT = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2},
}


def make_images(n: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def build_student(directory: Path, bits: int) -> Path:
    import torch

    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(0)
    model = build_model(ModelConfig(bits=bits, img_size=32, role="student", **TINY_STUDENT))
    return save_artifact(model, directory)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _client_proc(
    base: str | list[str],
    images: list[bytes],
    threads: int,
    seconds: float,
    max_requests: int,
    k: int,
    start_at: float,
) -> tuple[list[float], list[str], float]:
    """One load-generator process: ``threads`` clients searching in a loop until the deadline
    (client i talks to ``base[i % len(base)]`` when ``base`` is a list of servers)."""
    bases = [base] if isinstance(base, str) else list(base)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    while time.time() < start_at:  # all processes start together
        time.sleep(0.001)
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def worker(slot: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=bases[slot % len(bases)], timeout=30) as c:
            while time.perf_counter() < stop_at:
                n = next(counter)
                if n >= max_requests:
                    break
                img = images[n % len(images)]
                t0 = time.perf_counter()
                try:
                    r = c.post(
                        "/v1/search", params={"k": k}, files={"image": ("q.png", img, "image/png")}
                    )
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:100]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                if ok:
                    mine.append(time.perf_counter() - t0)
                else:
                    with lock:
                        errors.append(why)
        with lock:
            latencies.extend(mine)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def load(
    base: str | list[str],
    images: list[bytes],
    clients: int,
    seconds: float,
    max_requests: int,
    k: int,
    procs: int,
) -> dict:
    """``clients`` concurrent clients (threads spread over ``procs`` processes, so that the load
    generator's own GIL does not cap the rate) search for ``seconds``; rps and latency percentiles."""
    import multiprocessing as mp

    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + 1.0
    bases = [base] if isinstance(base, str) else list(base)
    # Process p's first client gets server p: the servers take turns over all clients.
    rotated = [bases[p % len(bases) :] + bases[: p % len(bases)] for p in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        outs = pool.starmap(
            _client_proc,
            [
                (rotated[p], images, n, seconds, max_requests // procs, k, start_at)
                for p, n in enumerate(shares)
            ],
        )
    wall = max(elapsed for _, _, elapsed in outs)
    latencies = [x for lat, _, _ in outs for x in lat]
    errors = [e for _, errs, _ in outs for e in errs]
    return {
        "clients": clients,
        "client_processes": procs,
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": round(wall, 2),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def server_counters(base: str) -> dict[str, float]:
    """Cumulative counters from /metrics: search latency sum/count, encode batch sum/count."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    vals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        vals[name] = float(value)
    key = 'method="POST",route="/v1/search",status="200"'
    return {
        "n": vals.get(f"hashkd_request_duration_seconds_count{{{key}}}", 0.0),
        "total": vals.get(f"hashkd_request_duration_seconds_sum{{{key}}}", 0.0),
        "bn": vals.get('hashkd_encode_batch_size_count{model="query"}', 0.0),
        "bs": vals.get('hashkd_encode_batch_size_sum{model="query"}', 0.0),
    }


def server_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    """Server-side mean search latency and mean encode batch size between two readings."""
    d = {key: after[key] - before[key] for key in after}
    return {
        "server_mean_ms": round(1000 * d["total"] / d["n"], 2) if d["n"] else None,
        "mean_encode_batch": round(d["bs"] / d["bn"], 2) if d["bn"] else None,
    }


def raw_setup(model: Path, codes_db: np.ndarray):
    """The same encoder and index as the server, in this process."""
    import indexes
    from hashkd.runtime import Encoder

    enc = Encoder.from_artifact(model, threads=1)
    index = indexes.create_index("flat", enc.bits)
    index.add(np.arange(len(codes_db)), codes_db)
    return enc, index


def paired_overhead(base: str, enc, index, images: list[bytes], k: int, pairs: int) -> dict:
    """Alternate one in-process decode+encode+search and one server request on the same image,
    so that both see the same machine load; the overhead is the median of the differences."""
    from hashkd.runtime.images import load_image

    diffs, raws, served = [], [], []
    with httpx.Client(base_url=base, timeout=30) as c:
        for i in range(pairs):
            img = images[i % len(images)]
            t0 = time.perf_counter()
            index.search(enc.encode([load_image(img)]), k)
            t1 = time.perf_counter()
            r = c.post("/v1/search", params={"k": k}, files={"image": ("q.png", img, "image/png")})
            t2 = time.perf_counter()
            assert r.status_code == 200, r.text
            raws.append(t1 - t0)
            served.append(t2 - t1)
            diffs.append((t2 - t1) - (t1 - t0))
    return {
        "pairs": pairs,
        "raw_p50_ms": round(percentile(raws, 50) * 1000, 2),
        "server_p50_ms": round(percentile(served, 50) * 1000, 2),
        "overhead_p50_ms": round(percentile(diffs, 50) * 1000, 2),
    }


def raw_in_process(
    model: Path, codes_db: np.ndarray, images: list[bytes], k: int, repeats: int
) -> dict:
    """Decode + encode + search of the same images in-process, one at a time (no server)."""
    import indexes
    from hashkd.runtime import Encoder
    from hashkd.runtime.images import load_image

    enc = Encoder.from_artifact(model, threads=1)
    index = indexes.create_index("flat", enc.bits)
    index.add(np.arange(len(codes_db)), codes_db)
    times = []
    for _ in range(2):  # warm-up
        index.search(enc.encode([load_image(images[0])]), k)
    for r in range(repeats):
        img = images[r % len(images)]
        t0 = time.perf_counter()
        index.search(enc.encode([load_image(img)]), k)
        times.append(time.perf_counter() - t0)
    return {
        "p50_ms": round(percentile(times, 50) * 1000, 2),
        "p99_ms": round(percentile(times, 99) * 1000, 2),
        "n": repeats,
        "backend": enc.backend,
    }


def cluster_bench(args: argparse.Namespace, model: Path, images: list[bytes], work: Path) -> dict:
    """Throughput of 1 and ``args.replicas`` cluster-mode replicas over one Milvus server."""
    from hashkd.models.artifact import read_config

    bits = read_config(model)[0].bits
    codes_db = np.random.default_rng(0).integers(0, 256, (args.items, bits // 8), dtype=np.uint8)
    collection = f"bench_{os.getpid()}_{int(time.time())}"
    server_args = [
        *("--model", str(model), "--cluster", "--index-spec", f"milvus:{args.milvus}"),
        *("--collection", collection, "--max-batch", str(args.max_batch)),
        *("--max-wait-seconds", str(args.max_wait_seconds), "--log-level", "warning"),
    ]
    results = []
    for count in sorted({1, args.replicas}):
        procs, bases = [], []
        try:
            for r in range(count):
                port = free_port()
                procs.append(start_server(server_args, port, work / f"replica{count}-{r}.log"))
                bases.append(f"http://127.0.0.1:{port}")
            if not results:  # fill the shared collection once
                buf = io.BytesIO()
                np.save(buf, codes_db)
                r = httpx.post(
                    f"{bases[0]}/v1/items/codes",
                    files={"codes": ("c.npy", buf.getvalue())},
                    timeout=600,
                )
                assert r.status_code == 201, r.text
            load(bases, images, 2, 1.0, 50, args.k, 1)  # warm-up
            for clients in args.clients:
                row = load(
                    bases,
                    images,
                    clients,
                    args.seconds,
                    args.max_requests,
                    args.k,
                    args.client_procs,
                )
                row["replicas"] = count
                results.append(row)
                print(
                    f"replicas={count} clients={clients:3d} rps={row['rps']:7.1f} "
                    f"p50={row['p50_ms']:7.2f} ms p99={row['p99_ms']:7.2f} ms "
                    f"errors={row['errors']}",
                    flush=True,
                )
        finally:
            for p in procs:
                stop_server(p)
    top = max(args.clients)
    rps = {r["replicas"]: r["rps"] for r in results if r["clients"] == top}
    return {
        "results": results,
        "summary": {
            "clients": top,
            "rps_by_replicas": rps,
            "speedup": round(rps[args.replicas] / max(rps[1], 1e-9), 2),
            "errors": sum(r["errors"] for r in results),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", type=Path, help="student artifact (default: a random-init tiny ViT at 32 px)"
    )
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--items", type=int, default=10_000, help="random codes in the index")
    ap.add_argument("--queries", type=int, default=64, help="distinct query images (32 px PNG)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=8.0, help="time per configuration")
    ap.add_argument("--max-requests", type=int, default=5000, help="request cap per configuration")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--client-procs", type=int, default=4, help="load-generator processes")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-seconds", type=float, default=0.002)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--milvus", metavar="URI", help="cluster mode: benchmark replicas over this Milvus server"
    )
    ap.add_argument("--replicas", type=int, default=2, help="replicas to compare with one")
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(ap, "scripts/bench_service.py")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    model = args.model or build_student(work / "student", args.bits)
    if args.milvus:
        report = cluster_bench(args, model, make_images(args.queries, 32, seed=1), work)
        report["config"] = {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(report["summary"], indent=2))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        return 0
    from hashkd.models.artifact import read_config

    bits = read_config(model)[0].bits
    images = make_images(args.queries, 32, seed=1)
    codes_db = np.random.default_rng(0).integers(0, 256, (args.items, bits // 8), dtype=np.uint8)
    raw = raw_in_process(model, codes_db, images, args.k, repeats=200)
    print(
        f"raw in-process decode+encode+search: p50 {raw['p50_ms']} ms, p99 {raw['p99_ms']} ms",
        flush=True,
    )

    results: dict[str, list[dict]] = {}
    baselines: dict[str, float] = {}
    paired: dict[str, dict] = {}
    enc, index = raw_setup(model, codes_db)
    for batching in (True, False):
        name = "batching" if batching else "no-batching"
        store = work / f"store-{name}"
        port = free_port()
        server_args = [
            "--model",
            str(model),
            "--store",
            str(store),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-seconds",
            str(args.max_wait_seconds),
            "--batching" if batching else "--no-batching",
            "--log-level",
            "warning",
        ]
        proc = start_server(server_args, port, work / f"{name}.log")
        try:
            base = f"http://127.0.0.1:{port}"
            buf, ids_buf = io.BytesIO(), io.BytesIO()
            np.save(buf, codes_db)
            np.save(ids_buf, np.arange(args.items, dtype=np.int64))
            r = httpx.post(
                f"{base}/v1/items/codes",
                files={"codes": ("c.npy", buf.getvalue()), "ids": ("i.npy", ids_buf.getvalue())},
                timeout=120,
            )
            assert r.status_code == 201, r.text
            load(base, images, 2, 1.0, 50, args.k, 1)  # warm-up
            # The cost of a bare HTTP round trip on this machine (client + uvicorn + FastAPI).
            with httpx.Client(base_url=base, timeout=30) as c:
                rtt = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    c.get("/healthz")
                    rtt.append(time.perf_counter() - t0)
            baselines[name] = round(percentile(rtt, 50) * 1000, 2)
            print(f"{name:12s} GET /healthz round trip p50 {baselines[name]} ms", flush=True)
            paired[name] = paired_overhead(base, enc, index, images, args.k, pairs=200)
            print(f"{name:12s} paired 1-client overhead: {paired[name]}", flush=True)
            results[name] = []
            for clients in args.clients:
                before = server_counters(base)
                row = load(
                    base,
                    images,
                    clients,
                    args.seconds,
                    args.max_requests,
                    args.k,
                    args.client_procs,
                )
                after = server_stats(before, server_counters(base))
                row.update(after)
                results[name].append(row)
                print(
                    f"{name:12s} clients={clients:3d} rps={row['rps']:7.1f} p50={row['p50_ms']:7.2f} ms "
                    f"p99={row['p99_ms']:7.2f} ms errors={row['errors']} "
                    f"(server mean {after['server_mean_ms']} ms, mean batch {after['mean_encode_batch']})",
                    flush=True,
                )
        finally:
            stop_server(proc)

    by = {n: {r["clients"]: r for r in rows} for n, rows in results.items()}
    top = max(args.clients)
    speedup = by["batching"][top]["rps"] / max(by["no-batching"][top]["rps"], 1e-9)
    overhead_off = paired["no-batching"]["overhead_p50_ms"]
    overhead_on = paired["batching"]["overhead_p50_ms"]
    errors = sum(r["errors"] for rows in results.values() for r in rows)
    one = min(args.clients)
    summary = {
        "healthz_rtt_p50_ms": baselines,
        "server_side_mean_minus_raw_p50_ms_1_client": {
            n: round(by[n][one]["server_mean_ms"] - raw["p50_ms"], 2)
            for n in by
            if by[n][one]["server_mean_ms"]
        },
        "speedup_at_max_clients": round(speedup, 2),
        "p50_overhead_ms_1_client_no_batching": round(overhead_off, 2),
        "p50_overhead_ms_1_client_batching": round(overhead_on, 2),
        "errors": errors,
        "goal_speedup_2x": speedup >= 2.0,
        "goal_overhead_5ms": min(overhead_off, overhead_on) <= 5.0,
        "goal_zero_errors": errors == 0,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    report = {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "bits": bits,
            "model": str(model),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "raw": raw,
        "paired_overhead": paired,
        "results": results,
        "summary": summary,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
