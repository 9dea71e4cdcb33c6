#!/usr/bin/env python
"""Benchmark hashkd.metrics.evaluate_codes against a straightforward per-query loop.

Random packed codes and single-label labels (default: 10,000 queries x 50,000 database items,
64 bits, 10 classes). The loop baseline ranks one query at a time (numpy Hamming distances,
stable argsort, AP@K) on a subsample of queries; its time is scaled to all queries to give the
speed-up. Both compute the same mAP on the subsample, which the script checks. Wall time and
CPU time of the process are both printed: on a shared machine the CPU time is the steadier one.

    OMP_NUM_THREADS=1 python scripts/bench_metrics.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from hashkd.metrics import code_health, collapse_warning, evaluate_codes


def loop_map(qc: np.ndarray, dc: np.ndarray, ql: np.ndarray, dl: np.ndarray, topk: int) -> float:
    """The straightforward evaluation: one query at a time (what most reference code does)."""
    from hashkd.codes import hamming_distances

    aps = []
    for i in range(qc.shape[0]):
        dist = hamming_distances(qc[i : i + 1], dc)[0]
        order = np.argsort(dist, kind="stable")[:topk]
        rel = (dl[order] @ ql[i]) > 0
        hits = np.cumsum(rel)
        aps.append(
            float((hits[rel] / (np.flatnonzero(rel) + 1)).sum() / hits[-1]) if hits[-1] else 0.0
        )
    return float(np.mean(aps))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--database", type=int, default=50_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--k", dest="topk", type=int, default=1000)
    p.add_argument("--radius", type=int, default=2)
    p.add_argument(
        "--loop-queries", type=int, default=200, help="queries evaluated by the loop baseline"
    )
    p.add_argument("--seed", type=int, default=0)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(p, "scripts/bench_metrics.py")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    qc = rng.integers(0, 256, (args.queries, args.bits // 8), dtype=np.uint8)
    dc = rng.integers(0, 256, (args.database, args.bits // 8), dtype=np.uint8)
    eye = np.eye(args.classes, dtype=np.uint8)
    ql = eye[rng.integers(0, args.classes, args.queries)]
    dl = eye[rng.integers(0, args.classes, args.database)]

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.queries} queries x {args.database} database items, {args.bits} bits, {args.classes} classes, "
        f"mAP@{args.topk}"
    )
    health = code_health(dc)
    print(
        f"database codes: {health['distinct_codes']} distinct, bit balance {health['bit_balance']:.4f}, "
        f"largest bucket {health['largest_bucket_fraction']:.4f}"
    )
    warning = collapse_warning(health, "database codes")
    if warning:
        print(warning)
    runs = {
        "evaluate_codes (mAP + P@r + curves + tie-averaged)": {},
        "evaluate_codes (mAP + P@r only)": {"curves": False, "tie_averaged": False},
    }
    seconds = {}
    for name, kwargs in runs.items():
        t, c = time.perf_counter(), time.process_time()
        res = evaluate_codes(qc, dc, ql, dl, topk=args.topk, radius=args.radius, **kwargs)
        seconds[name] = (time.perf_counter() - t, time.process_time() - c)
        tie = res["map_tie_averaged"]
        headline = f"mAP tie-averaged {tie:.5f}, position-broken " if tie is not None else "mAP "
        print(
            f"{name}: wall {seconds[name][0]:.2f} s, CPU {seconds[name][1]:.2f} s  ({headline}"
            f"{res['map']:.5f}, P@r<={args.radius} {res['precision_at_radius']:.5f})"
        )

    n = min(args.loop_queries, args.queries)
    t, c = time.perf_counter(), time.process_time()
    loop = loop_map(qc[:n], dc, ql[:n], dl, args.topk)
    loop_wall, loop_cpu = time.perf_counter() - t, time.process_time() - c
    sub = evaluate_codes(qc[:n], dc, ql[:n], dl, topk=args.topk, curves=False, tie_averaged=False)[
        "map"
    ]
    assert abs(loop - sub) < 1e-9, (loop, sub)
    scale = args.queries / n
    print(
        f"per-query loop: wall {loop_wall:.2f} s, CPU {loop_cpu:.2f} s for {n} queries -> estimated "
        f"wall {loop_wall * scale:.1f} s, CPU {loop_cpu * scale:.1f} s for {args.queries} "
        f"(same mAP on the subsample: {loop:.6f})"
    )
    for name, (wall, cpu) in seconds.items():
        print(
            f"speed-up of {name}: {loop_wall * scale / wall:.1f}x wall, {loop_cpu * scale / cpu:.1f}x CPU"
        )


if __name__ == "__main__":
    main()
