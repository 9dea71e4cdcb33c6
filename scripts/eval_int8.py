#!/usr/bin/env python
"""mAP change of the int8 ONNX graph against the fp32 one, on a data set's query/database splits.

The artifact must have an ONNX export with an int8 graph
(``hashkd export MODEL --format onnx --quantize int8 --data SPEC``). Both graphs encode the
query and database splits of ``--data`` (the same protocol and seed as ``hashkd evaluate``)
through :class:`hashkd.runtime.Encoder` (``precision='fp32'`` and ``'int8'``); the codes are
scored with :func:`hashkd.metrics.evaluate_codes`. The change is judged on the **tie-averaged**
mAP@K (the expected value under a random order of equal Hamming distances, which ties cannot
inflate); the change of the value with ties broken by database position is reported beside it. Also reported: the fraction of code bits the two graphs agree on, and the
encoding throughput of each (indicative only, unless the machine is idle).

Example (issue 17's goal: the int8 student within 0.5 mAP point of the fp32 student)::

    python scripts/eval_int8.py runs/student-export --data cifar10 --threads 2 --json-out int8-map.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.encoding import select_split
from hashkd.metrics import evaluate_codes
from hashkd.runtime import Encoder

GOAL_MAP_POINTS = 0.5


def encode_split(enc: Encoder, dataset: Any, chunk: int = 256) -> tuple[np.ndarray, float]:
    """Codes of every image of ``dataset`` (decoded by the data set, preprocessed by ``enc``)."""
    parts, seconds = [], 0.0
    for start in range(0, len(dataset), chunk):
        images = [dataset.load_image(i) for i in range(start, min(start + chunk, len(dataset)))]
        t0 = time.perf_counter()
        parts.append(enc.encode(images))
        seconds += time.perf_counter() - t0
    empty = np.empty((0, enc.bits // 8), np.uint8)
    return (np.concatenate(parts) if parts else empty), seconds


def compare_precisions(
    model_dir: str,
    data: str,
    protocol: str | None = None,
    seed: int = 0,
    topk: int = 1000,
    threads: int | None = None,
) -> dict[str, Any]:
    """fp32 vs int8 codes of ``model_dir`` on the query/database splits of ``data``."""
    query, q_info = select_split(data, split="query", protocol=protocol, seed=seed)
    database, _ = select_split(data, split="database", protocol=protocol, seed=seed)
    out: dict[str, Any] = {
        "model": str(model_dir),
        "data": q_info,
        "num_query": len(query),
        "num_database": len(database),
    }
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        enc = Encoder.from_artifact(model_dir, backend="onnx", precision=precision, threads=threads)
        q_codes, q_s = encode_split(enc, query)
        d_codes, d_s = encode_split(enc, database)
        codes[precision] = (q_codes, d_codes)
        scores = evaluate_codes(
            q_codes, d_codes, query.labels, database.labels, topk=topk, curves=False
        )
        out[precision] = {
            "map": scores["map"],
            "map_tie_averaged": scores.get("map_tie_averaged"),
            "topk": scores["topk"],
            "images_per_s": (len(query) + len(database)) / max(q_s + d_s, 1e-9),
        }
    both = [np.concatenate(codes[p]) for p in ("fp32", "int8")]
    bits_fp32, bits_int8 = (np.unpackbits(c, axis=1) for c in both)
    out["bit_agreement"] = float((bits_fp32 == bits_int8).mean()) if bits_fp32.size else 1.0
    out.update(judge(out["fp32"], out["int8"]))
    return out


def judge(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """The mAP change in points, int8 - fp32, on the tie-averaged mAP (the headline and the
    goal) and on the position-broken one (``map_change_points_position``)."""
    change = 100 * (int8["map_tie_averaged"] - fp32["map_tie_averaged"])
    return {
        "map_change_points": change,
        "map_change_points_position": 100 * (int8["map"] - fp32["map"]),
        "within_goal": abs(change) <= GOAL_MAP_POINTS,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="model artifact with an int8 ONNX export")
    p.add_argument("--data", required=True, help="data spec: digits, cifar10[:PATH], a folder ...")
    p.add_argument("--split-protocol", default=None, help="named split protocol (default: data's)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--k", dest="topk", type=int, default=1000, help="K of mAP@K (default 1000)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument(
        "--json-out", dest="json", default=None, help="also write the figures to this JSON file"
    )
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(p, "scripts/eval_int8.py")
    args = p.parse_args(argv)
    try:
        res = compare_precisions(
            args.model_dir, args.data, args.split_protocol, args.seed, args.topk, args.threads
        )
    except ValueError as exc:
        print(f"eval_int8: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{res['model']} on {args.data}: {res['num_query']} queries, {res['num_database']} database"
    )
    print("| precision | mAP@K (tie-averaged) | mAP@K (ties by position) | images/s |")
    print("|---|---:|---:|---:|")
    for precision in ("fp32", "int8"):
        r = res[precision]
        print(
            f"| {precision} | {r['map_tie_averaged']:.4f} | {r['map']:.4f} | "
            f"{r['images_per_s']:.0f} |"
        )
    print(
        f"tie-averaged mAP change {res['map_change_points']:+.2f} points (goal: within "
        f"{GOAL_MAP_POINTS}; {'met' if res['within_goal'] else 'NOT met'}; by position "
        f"{res['map_change_points_position']:+.2f}); "
        f"fp32/int8 code bit agreement {100 * res['bit_agreement']:.2f}%"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
