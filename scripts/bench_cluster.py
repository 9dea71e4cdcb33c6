"""Benchmark cluster mode (issue 25): replicas over a real Milvus server, at Bounded and Strong.

It starts its own Milvus 2.3 standalone server (``tests/milvus_server.py``, the ``milvus``
extra) and ``hashkd serve --cluster`` replicas on loopback, bulk-loads ``--items`` random codes
through ``POST /v1/items/codes`` once, and measures, for each read consistency
(``--consistency bounded`` and ``strong``, one replica restarted per level):

- 1-client search p50 / p99 (``POST /v1/search/codes``, one code, k = 10);
- 1-client single-code add p50 (no ids: new ids from the replica's leased block);
- 1-client read-your-writes p50: an add, then at once a search through *another* replica
  passing the add's consistency token (the item must be found; Bounded only);
- throughput of ``--clients`` concurrent searching clients over 1 replica and over 2 replicas.

Every search answer of the latency runs is checked against a brute-force oracle over the
loaded codes (``exact`` counts mismatches). Prints a table and the ratios (Strong / Bounded
search p50, 2 / 1 replicas throughput) and writes JSON::

    python scripts/bench_cluster.py --items 20000 --out bench-cluster.json
    python scripts/bench_cluster.py --items 2000 --requests 20 --seconds 3   # a quick check

The load generator's clients are threads of this process (httpx), on the same machine as
Milvus and the replicas: on a small machine they compete for the same cores.
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

from tests.milvus_server import MilvusServer, launcher  # noqa: E402
from tests.test_service_support import free_port, start_server, stop_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import build_student  # noqa: E402 - the same tiny student

TOKEN = "X-Consistency-Token"


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 2) if values else float("nan")


def oracle(q: np.ndarray, ids: np.ndarray, codes: np.ndarray, k: int) -> list[tuple[int, int]]:
    """(id, distance) of the k nearest by brute force, ties by ascending id."""
    dist = np.unpackbits(np.bitwise_xor(codes, q[None, :]), axis=1).sum(axis=1)
    order = np.lexsort((ids, dist))[:k]
    return [(int(ids[j]), int(dist[j])) for j in order]


class Cluster:
    """Replicas of one consistency level over the benchmark's Milvus collection."""

    def __init__(self, args: argparse.Namespace, model: Path, uri: str, work: Path) -> None:
        self.args, self.model, self.uri, self.work = args, model, uri, work
        self.procs: list = []
        self.urls: list[str] = []

    def start(self, count: int, consistency: str) -> list[str]:
        self.stop()
        for r in range(count):
            port = free_port()
            argv = ["--model", str(self.model), "--cluster", "--index-spec", f"milvus:{self.uri}"]
            argv += ["--collection", self.args.collection, "--consistency", consistency]
            argv += ["--max-wait-seconds", "0.001", "--milvus-timeout-seconds", "30"]
            argv += ["--log-level", "warning"]
            log = self.work / f"replica-{consistency}-{count}-{r}.log"
            self.procs.append(start_server(argv, port, log))
            self.urls.append(f"http://127.0.0.1:{port}")
        return self.urls

    def stop(self) -> None:
        for proc in self.procs:
            stop_server(proc)
        self.procs, self.urls = [], []


def bulk_load(url: str, codes: np.ndarray, chunk: int) -> tuple[np.ndarray, float, str]:
    """Load the codes through ``/v1/items/codes`` in chunks; (ids, codes/s, newest token)."""
    ids: list[int] = []
    token = ""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as c:
        for s in range(0, len(codes), chunk):
            r = c.post("/v1/items/codes", files={"codes": ("c.npy", npy(codes[s : s + chunk]))})
            assert r.status_code == 201, r.text
            ids += r.json()["ids"]
            token = r.json()["consistency_token"] or token
    return np.array(ids, dtype=np.int64), len(codes) / (time.perf_counter() - t0), token


def search_latency(
    url: str, queries: np.ndarray, ids: np.ndarray, codes: np.ndarray, token: str
) -> dict:
    """1-client search latency; every answer checked against the oracle."""
    times, wrong = [], 0
    with httpx.Client(base_url=url, timeout=60, headers={TOKEN: token}) as c:
        for q in queries:
            t0 = time.perf_counter()
            r = c.post("/v1/search/codes", json={"codes": q.tobytes().hex(), "k": 10})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            got = [(h["id"], h["distance"]) for h in r.json()["results"][0]]
            wrong += got != oracle(q, ids, codes, 10)
    return {
        "searches": len(times),
        "p50_ms": ms(times, 50),
        "p99_ms": ms(times, 99),
        "wrong": wrong,
    }


def add_latency(url: str, reader: str | None, n: int, bits: int, seed: int, added: list) -> dict:
    """1-client single-code adds (appended to ``added`` as (id, code)); with ``reader``, each
    add is followed at once by a search through that other replica passing the add's token
    (read-your-writes), which must find it."""
    rng = np.random.default_rng(seed)
    adds, reads, missed = [], [], 0
    with httpx.Client(base_url=url, timeout=60) as w, httpx.Client(timeout=60) as rd:
        for _ in range(n):
            code = rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)
            t0 = time.perf_counter()
            r = w.post("/v1/items/codes", files={"codes": ("c.npy", npy(code))})
            adds.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
            added.append((r.json()["ids"][0], code[0]))
            if reader is None:
                continue
            body = {"codes": code[0].tobytes().hex(), "radius": 0}
            t0 = time.perf_counter()
            found = rd.post(
                f"{reader}/v1/search/codes",
                json=body,
                headers={TOKEN: r.json()["consistency_token"]},
            )
            reads.append(time.perf_counter() - t0)
            missed += r.json()["ids"][0] not in [h["id"] for h in found.json()["results"][0]]
    out = {"adds": n, "add_p50_ms": ms(adds, 50), "add_p99_ms": ms(adds, 99)}
    if reader is not None:
        out.update(token_read_p50_ms=ms(reads, 50), token_read_p99_ms=ms(reads, 99), missed=missed)
    return out


def throughput(urls: list[str], queries: np.ndarray, clients: int, seconds: float) -> dict:
    """``clients`` threads searching back to back for ``seconds``, spread over ``urls``."""
    counts, errors, lock = [0] * clients, [0], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run(c: int) -> None:
        with httpx.Client(base_url=urls[c % len(urls)], timeout=60) as http:
            j = c
            while time.perf_counter() < stop_at:
                q = queries[j % len(queries)]
                j += clients
                r = http.post("/v1/search/codes", json={"codes": q.tobytes().hex(), "k": 10})
                if r.status_code == 200:
                    counts[c] += 1
                else:
                    with lock:
                        errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "rps": round(sum(counts) / wall, 1), "errors": errors[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20_000, help="codes bulk-loaded (default 20k)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200, help="searches per latency run")
    ap.add_argument("--adds", type=int, default=100, help="adds per latency run")
    ap.add_argument("--clients", type=int, default=8, help="clients of the throughput runs")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per throughput run")
    ap.add_argument("--chunk", type=int, default=10_000, help="codes per bulk-load request")
    ap.add_argument("--collection", default="bench_cluster")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    command = launcher()
    if command is None:
        raise SystemExit("no milvus-server launcher: pip install 'hashkd[milvus]'")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.items, args.bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.requests, args.bits // 8), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        model = build_student(work / "student", args.bits)
        server = MilvusServer(command, work / "milvus")
        server.start()
        cluster = Cluster(args, model, server.uri, work)
        rows: list[dict] = []
        try:
            urls = cluster.start(2, "bounded")
            ids, rate, token = bulk_load(urls[0], codes, args.chunk)
            print(f"bulk load: {args.items} codes at {rate:,.0f} codes/s", flush=True)
            added: list = []
            for level in ("bounded", "strong"):
                urls = cluster.start(2, level)
                row = {"consistency": level, "items": args.items + len(added)}
                all_ids = np.concatenate([ids, np.array([i for i, _ in added], dtype=np.int64)])
                all_codes = np.concatenate([codes, *[c[None, :] for _, c in added]])
                row.update(search_latency(urls[0], queries, all_ids, all_codes, token))
                reader = urls[1] if level == "bounded" else None
                row.update(add_latency(urls[0], reader, args.adds, args.bits, len(rows) + 1, added))
                for count in (1, 2):
                    tp = throughput(urls[:count], queries, args.clients, args.seconds)
                    row[f"rps_{count}_replicas"] = tp["rps"]
                    row["throughput_errors"] = row.get("throughput_errors", 0) + tp["errors"]
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            cluster.stop()
            server.stop()
    by = {r["consistency"]: r for r in rows}
    ratios = {
        "search_p50_strong_over_bounded": round(
            by["strong"]["p50_ms"] / by["bounded"]["p50_ms"], 1
        ),
        "add_p50_strong_over_bounded": round(
            by["strong"]["add_p50_ms"] / by["bounded"]["add_p50_ms"], 2
        ),
        "rps_2_over_1_replicas_bounded": round(
            by["bounded"]["rps_2_replicas"] / max(by["bounded"]["rps_1_replicas"], 1e-9), 2
        ),
        "rps_2_over_1_replicas_strong": round(
            by["strong"]["rps_2_replicas"] / max(by["strong"]["rps_1_replicas"], 1e-9), 2
        ),
    }
    header = (
        f"{'consistency':>11} {'search p50':>10} {'p99':>8} {'add p50':>8} {'token read':>10} "
        f"{'rps 1 rep':>9} {'rps 2 rep':>9} {'wrong':>5}"
    )
    print(f"\n{args.items} items x {args.bits} bits, {args.clients} clients for throughput")
    print(header)
    for r in rows:
        token_read = r.get("token_read_p50_ms")
        token_text = f"{token_read:>8.1f}ms" if token_read is not None else f"{'-':>10}"
        print(
            f"{r['consistency']:>11} {r['p50_ms']:>8.1f}ms {r['p99_ms']:>6.1f}ms "
            f"{r['add_p50_ms']:>6.1f}ms {token_text} {r['rps_1_replicas']:>9.1f} "
            f"{r['rps_2_replicas']:>9.1f} {r['wrong']:>5}"
        )
    print("ratios:", json.dumps(ratios))
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "items": args.items,
        "bits": args.bits,
        "bulk_load_codes_per_s": round(rate, 1),
        "rows": rows,
        "ratios": ratios,
        "missed_token_reads": by["bounded"].get("missed", 0),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    bad = sum(r["wrong"] for r in rows) + result["missed_token_reads"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
