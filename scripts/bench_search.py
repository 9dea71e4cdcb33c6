"""Benchmark the binary index backends: queries per second, recall@10, memory.

For each database size and code length (random codes, plus optional ``--codeset`` dirs) every
backend answers the same queries beside a plain numpy xor + ``bitwise_count`` scan, which is
also the ground truth. Then the three goals of issue 5:

1. FAISS flat >= 10x the numpy scan at 1M x 64 bits, single thread (hashkd's flat index: codes
   in FAISS's IndexBinaryFlat storage, searched by the indexes.hamming_scan kernel; FAISS's own
   scan is the faiss_bflat row);
2. radius <= 2 lookup with multi-index hashing >= 10x flat range search on 1M CLUSTERED codes
   (centres + a few random bit flips), with identical results;
3. 10 million 64-bit codes in under 200 MB of index memory (flat index; measured as the RSS
   growth of the process while the index is filled, and as the size of the saved file).

recall@10 is tie-aware: |returned with d < d10| + min(#returned at d10, #true at d10), over 10,
where d10 is the true 10th distance (any tie-break among equal distances is right).

    OMP_NUM_THREADS=1 python scripts/bench_search.py --json-out bench.json
    python scripts/bench_search.py --sizes 20000 --bits 64 --queries 20 --skip-goals   # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexes import create_index, set_threads  # noqa: E402

K = 10


def rss_mb() -> float:
    """Resident set size in MB, after asking glibc to return freed heap memory (malloc_trim)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def numpy_prepare(db: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Once per database: uint64 words (when K % 64 == 0) in ascending-id order."""
    order = np.argsort(ids, kind="stable")
    words = np.ascontiguousarray(db[order])
    return (words.view(np.uint64) if db.shape[1] % 8 == 0 else words), ids[order]


def numpy_knn(
    q: np.ndarray, dbw: np.ndarray, sids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by a numpy scan: xor + bitwise_count, argpartition; ties by ascending id."""
    qw = q.view(np.uint64) if q.shape[1] % 8 == 0 else q
    n = dbw.shape[0]
    out_d = np.empty((len(q), k), np.int32)
    out_i = np.empty((len(q), k), np.int64)
    pos = np.arange(n, dtype=np.int64)
    for r in range(len(q)):
        d = np.bitwise_count(np.bitwise_xor(dbw, qw[r])).sum(axis=1, dtype=np.int32)
        key = d.astype(np.int64) * n + pos  # (distance, id) in one key: rows are in id order
        top = np.argpartition(key, k - 1)[:k]
        top = top[np.argsort(key[top])]
        out_d[r], out_i[r] = d[top], sids[top]
    return out_d, out_i


def numpy_bytes_scan(q: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """The plain byte-wise scan (uint8 xor + bitwise_count per byte, argpartition), for reference."""
    out = np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        d = np.bitwise_count(np.bitwise_xor(db, q[r])).sum(axis=1, dtype=np.int32)
        out[r] = np.argpartition(d, k - 1)[:k]
    return out


class Timer:
    """Wall-clock and process CPU time (CPU time is robust to other load on a shared machine)."""

    def __enter__(self) -> Timer:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def recall_at_k(found_d: np.ndarray, true_d: np.ndarray, k: int = K) -> float:
    out = []
    for f, t in zip(found_d, true_d, strict=True):
        dk = t[k - 1]
        f = f[f >= 0]
        out.append(((f < dk).sum() + min((f == dk).sum(), (t[:k] == dk).sum())) / k)
    return float(np.mean(out))


def clustered_codes(
    rng: np.random.Generator, n: int, bits: int, centres: int = 20000, max_flips: int = 3
) -> np.ndarray:
    """Codes near ``centres`` random centres: each copies a centre and flips 0..max_flips bits."""
    c = np.packbits(rng.integers(0, 2, (centres, bits), dtype=np.uint8), axis=1)
    x = np.unpackbits(c[rng.integers(0, centres, n)], axis=1)
    flips = rng.integers(0, max_flips + 1, n)
    for j in range(max_flips):
        rows = np.nonzero(flips > j)[0]
        x[rows, rng.integers(0, bits, len(rows))] ^= 1
    return np.packbits(x, axis=1)


def spec_for(backend: str, n: int) -> tuple[str, dict]:
    if backend == "ivf":
        nlist = max(16, int(np.sqrt(n)))
        return f"ivf:{nlist}", {"nprobe": 16}
    if backend == "hnsw":
        return "hnsw:16", {"ef_search": 64}
    return backend, {}


def bench_backend(backend: str, db, ids, q, true_d, tmpdir: Path, log) -> dict:
    n, bits = db.shape[0], db.shape[1] * 8
    spec, opts = spec_for(backend, n)
    index = create_index(spec, bits, **opts)
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    if backend == "ivf":
        index.train(db[: min(n, 64 * int(spec.split(":")[1]))])
    index.add(ids, db)
    build = time.perf_counter() - t0
    grown = rss_mb() - before
    path = tmpdir / "bench.idx"
    index.save(path)
    size = path.stat().st_size
    path.unlink()
    index.search(q[:2], K)  # warm up
    with Timer() as t:
        dist, _ = index.search(q, K)
    row = {
        "backend": backend,
        "spec": spec,
        "options": opts,
        "n": n,
        "bits": bits,
        "build_s": round(build, 2),
        "qps_cpu": round(len(q) / t.cpu, 1),
        "qps_wall": round(len(q) / t.wall, 1),
        "cpu_ms_per_query": round(1e3 * t.cpu / len(q), 3),
        f"recall@{K}": round(recall_at_k(dist, true_d), 4),
        "file_mb_per_million": round(size / n * 1e6 / 2**20, 1),
        "rss_mb_per_million": round(grown / n * 1e6, 1),
    }
    log(row)
    del index
    gc.collect()
    return row


def bench_faiss_bflat(db: np.ndarray, q: np.ndarray, true_d: np.ndarray, log) -> dict:
    """FAISS's own exact scan (``IndexBinaryFlat.search``), without hashkd's kernel or wrapper."""
    import faiss

    n, bits = db.shape[0], db.shape[1] * 8
    index = faiss.IndexBinaryFlat(bits)
    index.add(db)
    index.search(q[:2], K)
    with Timer() as t:
        dist, _ = index.search(q, K)
    row = {
        "backend": "faiss_bflat",
        "spec": "faiss.IndexBinaryFlat.search",
        "n": n,
        "bits": bits,
        "qps_cpu": round(len(q) / t.cpu, 1),
        "qps_wall": round(len(q) / t.wall, 1),
        "cpu_ms_per_query": round(1e3 * t.cpu / len(q), 3),
        f"recall@{K}": round(recall_at_k(dist, true_d), 4),
    }
    log(row)
    return row


def row_at_1m_64(rows: list[dict], backend: str) -> dict | None:
    """The row of ``backend`` on 1M x 64-bit random codes, if it ran."""
    return next(
        (r for r in rows if r["backend"] == backend and r["n"] == 1_000_000 and r["bits"] == 64),
        None,
    )


def goal_flat_vs_numpy(rows: list[dict]) -> dict | None:
    flat, scan = row_at_1m_64(rows, "flat"), row_at_1m_64(rows, "numpy")
    if not flat or not scan:
        return None
    ratio = flat["qps_cpu"] / scan["qps_cpu"]
    out = {
        "goal": "flat >= 10x numpy scan at 1M x 64 bits, 1 thread",
        "speedup": round(ratio, 1),
        "met": ratio >= 10,
    }
    scan8 = row_at_1m_64(rows, "numpy8")
    if scan8:
        out["speedup_vs_bytewise_scan"] = round(flat["qps_cpu"] / scan8["qps_cpu"], 1)
    raw = row_at_1m_64(rows, "faiss_bflat")
    if raw:
        out["faiss_bflat_speedup_vs_numpy"] = round(raw["qps_cpu"] / scan["qps_cpu"], 1)
        out["flat_speedup_vs_faiss_bflat"] = round(flat["qps_cpu"] / raw["qps_cpu"], 1)
    return out


def goal_multihash_radius(n: int, nq: int, rng, log) -> dict:
    db = clustered_codes(rng, n, 64)
    ids = rng.permutation(n).astype(np.int64) * 7 + 3
    q = db[rng.integers(0, n, nq)].copy()
    q[np.arange(nq), rng.integers(0, 8, nq)] ^= np.uint8(1) << rng.integers(0, 8, nq).astype(
        np.uint8
    )
    out = {
        "goal": "multihash radius<=2 >= 10x flat range search, 1M clustered 64-bit codes, identical results",
        "n": n,
        "queries": nq,
    }
    results = {}
    for spec in ("flat", "multihash:4x16"):
        index = create_index(spec, 64)
        t0 = time.perf_counter()
        index.add(ids, db)
        build = time.perf_counter() - t0
        index.range_search(q[:2], 2)
        with Timer() as t:
            res = index.range_search(q, 2)
        results[spec] = res
        out[spec] = {
            "build_s": round(build, 2),
            "qps_cpu": round(nq / t.cpu, 1),
            "qps_wall": round(nq / t.wall, 1),
            "cpu_ms_per_query": round(1e3 * t.cpu / nq, 4),
        }
        log({spec: out[spec]})
        del index
        gc.collect()
    same = all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for a, b in zip(results["flat"], results["multihash:4x16"], strict=True)
    )
    out["hits_per_query"] = round(float(np.mean([len(r[1]) for r in results["flat"]])), 2)
    out["identical"] = bool(same)
    out["speedup"] = round(out["multihash:4x16"]["qps_cpu"] / out["flat"]["qps_cpu"], 1)
    out["met"] = bool(same and out["speedup"] >= 10)
    return out


MEMORY_PROBES = ("faiss-BFlat", "faiss-IDMap,BFlat", "faiss-IDMap2,BFlat", "hashkd-flat")


def memory_probe(kind: str, n: int, seed: int) -> dict:
    """In a fresh process: RSS growth while ``n`` random 64-bit codes are added to ``kind``."""
    import faiss

    rng = np.random.default_rng(seed)
    db = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    ids = np.arange(n, dtype=np.int64)
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    if kind.startswith("faiss-"):
        index = faiss.index_binary_factory(64, kind.removeprefix("faiss-"))
        if kind == "faiss-BFlat":
            index.add(db)
        else:
            index.add_with_ids(db, ids)
    else:
        index = create_index("flat", 64)
        index.add(ids, db)
    build = time.perf_counter() - t0
    gc.collect()
    return {
        "kind": kind,
        "n": n,
        "build_s": round(build, 1),
        "rss_growth_mb": round(rss_mb() - before, 1),
    }


def goal_memory(n: int, seed: int, tmpdir: Path, log) -> dict:
    """The 10M goal: saved-file size of a hashkd flat index, and RSS growth per structure
    (each measured in a fresh subprocess so that freed memory of earlier steps is not reused)."""
    import subprocess

    probes = {}
    for kind in MEMORY_PROBES:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-probe",
                kind,
                "--memory-n",
                str(n),
                "--seed",
                str(seed),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        probes[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        log(probes[kind])
    rng = np.random.default_rng(seed)
    index = create_index("flat", 64)
    index.add(np.arange(n, dtype=np.int64), rng.integers(0, 256, (n, 8), dtype=np.uint8))
    path = tmpdir / "mem.idx"
    index.save(path)
    size_mb = path.stat().st_size / 2**20
    path.unlink()
    rss = probes["hashkd-flat"]["rss_growth_mb"]
    out = {
        "goal": "10M x 64-bit codes in < 200 MB of index memory (flat)",
        "n": n,
        "raw_codes_mb": round(n * 8 / 2**20, 1),
        "file_mb": round(size_mb, 1),
        "rss_growth_mb": rss,
        "rss_by_structure_mb": {k: v["rss_growth_mb"] for k, v in probes.items()},
        "met_by_file_size": size_mb < 200,
        "met_by_rss": rss < 200,
    }
    log(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        default="100000,1000000",
        help="database sizes, comma separated (default 100000,1000000; empty: none)",
    )
    p.add_argument(
        "--bits", default="64,256", help="code lengths, comma separated (default 64,256)"
    )
    p.add_argument("--queries", type=int, default=100, help="queries per measurement (default 100)")
    p.add_argument(
        "--backends",
        default="numpy,numpy8,faiss_bflat,flat,ivf,hnsw,multihash",
        help="backends to run (default all; numpy = uint64-word scan, the baseline and ground truth; "
        "numpy8 = byte-wise scan, for reference; faiss_bflat = FAISS's own IndexBinaryFlat scan, "
        "which hashkd's flat index stores its codes in but does not search with)",
    )
    p.add_argument(
        "--hnsw-max",
        type=int,
        default=100_000,
        help="skip hnsw above this size (its single-thread build is slow)",
    )
    p.add_argument(
        "--codeset",
        action="append",
        default=[],
        help="also run on a code set directory (codes.npy, ids.npy); repeatable",
    )
    p.add_argument(
        "--index-threads",
        dest="threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads (default 1)",
    )
    p.add_argument(
        "--radius-n",
        type=int,
        default=1_000_000,
        help="clustered codes for the radius goal (default 1M; 0 skips)",
    )
    p.add_argument(
        "--radius-queries",
        type=int,
        default=1000,
        help="queries for the radius goal (default 1000)",
    )
    p.add_argument(
        "--memory-n",
        type=int,
        default=10_000_000,
        help="codes for the memory goal (default 10M; 0 skips)",
    )
    p.add_argument("--skip-goals", action="store_true", help="only the QPS/recall grid")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--json-out", dest="json", default=None, help="write all figures to this JSON file"
    )
    p.add_argument("--memory-probe", choices=MEMORY_PROBES, default=None, help=argparse.SUPPRESS)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(p, "scripts/bench_search.py")
    args = p.parse_args(argv)
    if args.memory_probe:  # internal: one RSS measurement in a fresh process
        set_threads(args.threads)
        print(json.dumps(memory_probe(args.memory_probe, args.memory_n, args.seed)))
        return 0

    set_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    start = time.perf_counter()

    def log(obj) -> None:
        print(json.dumps(obj), flush=True)

    datasets = []
    for bits in (int(b) for b in args.bits.split(",") if b.strip()):
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            datasets.append((f"random n={n} bits={bits}", n, bits, None))
    for d in args.codeset:
        datasets.append((f"codeset {d}", None, None, d))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        for name, n, bits, directory in datasets:
            if directory:
                db = np.load(Path(directory) / "codes.npy", allow_pickle=False)
                ids_path = Path(directory) / "ids.npy"
                ids = (
                    np.load(ids_path, allow_pickle=False)
                    if ids_path.is_file()
                    else np.arange(len(db))
                )
                ids = ids.astype(np.int64)
                q = db[rng.integers(0, len(db), args.queries)]
            else:
                db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
                ids = rng.permutation(n).astype(np.int64)
                q = rng.integers(0, 256, (args.queries, bits // 8), dtype=np.uint8)
            n, bits = db.shape[0], db.shape[1] * 8
            log({"dataset": name})
            dbw, sids = numpy_prepare(db, ids)
            with Timer() as t:
                true_d, _ = numpy_knn(q, dbw, sids, K)
            del dbw, sids
            if "numpy" in backends:
                row = {
                    "backend": "numpy",
                    "spec": "xor+bitwise_count",
                    "n": n,
                    "bits": bits,
                    "dataset": name,
                    "qps_cpu": round(len(q) / t.cpu, 1),
                    "qps_wall": round(len(q) / t.wall, 1),
                    "cpu_ms_per_query": round(1e3 * t.cpu / len(q), 3),
                    f"recall@{K}": 1.0,
                    "file_mb_per_million": round(bits / 8 * 1e6 / 2**20, 1),
                }
                log(row)
                rows.append(row)
            if "numpy8" in backends:
                with Timer() as t:
                    numpy_bytes_scan(q, db, K)
                row = {
                    "backend": "numpy8",
                    "spec": "uint8 xor+bitwise_count (bytes)",
                    "n": n,
                    "bits": bits,
                    "dataset": name,
                    "qps_cpu": round(len(q) / t.cpu, 1),
                    "qps_wall": round(len(q) / t.wall, 1),
                    "cpu_ms_per_query": round(1e3 * t.cpu / len(q), 3),
                }
                log(row)
                rows.append(row)
            if "faiss_bflat" in backends:
                row = bench_faiss_bflat(db, q, true_d, log)
                row["dataset"] = name
                rows.append(row)
            for backend in backends:
                if backend in ("numpy", "numpy8", "faiss_bflat") or (
                    backend == "hnsw" and n > args.hnsw_max
                ):
                    continue
                row = bench_backend(backend, db, ids, q, true_d, tmpdir, log)
                row["dataset"] = name
                rows.append(row)
            del db, ids
            gc.collect()
        goals = []
        if not args.skip_goals:
            g = goal_flat_vs_numpy(rows)
            if g:
                goals.append(g)
                log(g)
            if args.radius_n:
                goals.append(goal_multihash_radius(args.radius_n, args.radius_queries, rng, log))
                log(goals[-1])
            if args.memory_n:
                goals.append(goal_memory(args.memory_n, args.seed, tmpdir, log))
    wall = time.perf_counter() - start
    result = {
        "load_average_at_end": os.getloadavg(),
        "command": " ".join(
            ["python", "scripts/bench_search.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "threads": args.threads,
        },
        "rows": rows,
        "goals": goals,
        "wall_s": round(wall, 1),
    }
    log({"wall_s": round(wall, 1)})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
