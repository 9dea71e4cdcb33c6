#!/usr/bin/env python
"""Teacher quality under one protocol, beside two baselines measured in the same run.

Rows: the trained teacher artifact(s); the same architecture untrained (same seed, random
init); random-hyperplane LSH on raw pixels (hashkd.baselines.PixelLSH). All at the
teacher's code length, queries and database of the protocol: mAP@topk tie-averaged (the
headline: the expected mAP under a random order of equal Hamming distances) with the
position-broken value beside it, precision within Hamming radius 2, and the health of the
database codes (distinct codes, bit balance, largest bucket; a warning when collapsed).

    python scripts/bench_teacher.py --teacher runs/teacher_vit6_64 --data cifar10 \
        --split-protocol cifar10-cpu --json-out runs/bench_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hashkd.baselines import PixelLSH  # noqa: E402
from hashkd.data.transforms import eval_transform  # noqa: E402
from hashkd.metrics import code_health, collapse_warning, evaluate_codes  # noqa: E402
from hashkd.models import build_model, load_artifact  # noqa: E402
from hashkd.models.artifact import read_config  # noqa: E402
from hashkd.training.common import Split, encode_split  # noqa: E402
from hashkd.training.data_setup import prepare_data  # noqa: E402


def pixels(split: Split, img_size: int) -> np.ndarray:
    tf = eval_transform(img_size)
    return np.stack([tf(split.source.load_image(int(i))).numpy().ravel() for i in split.indices])


def row(name: str, q: np.ndarray, d: np.ndarray, data, topk: int, seconds: float) -> dict:
    r = evaluate_codes(
        q, d, data.query.labels, data.database.labels, topk=topk, radius=2, curves=False
    )
    health = code_health(d)
    warning = collapse_warning(health, f"{name} database codes")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return {
        "model": name,
        "bits": int(q.shape[1] * 8),
        "map_tie_averaged": float(r["map_tie_averaged"]),
        "map": float(r["map"]),
        "precision_at_radius": float(r["precision_at_radius"]),
        "health": health,
        "topk": topk,
        "num_queries": len(q),
        "num_database": len(d),
        "encode_s": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--teacher",
        nargs="+",
        required=True,
        help="teacher artifact directories (same code length)",
    )
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--split-protocol", dest="protocol", default=None)
    ap.add_argument("--seed", type=int, default=0, help="split seed (must be the teacher's)")
    ap.add_argument("--k", dest="topk", type=int, default=1000)
    ap.add_argument("--json-out", dest="json", default=None)
    ap.add_argument("--markdown", default=None)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(ap, "scripts/bench_teacher.py")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = prepare_data(args.data, None, args.protocol, args.seed)
    dev = torch.device("cpu")
    rows = []
    first_cfg = None
    for t in args.teacher:
        cfg, _ = read_config(t)
        first_cfg = first_cfg or cfg
        model = load_artifact(t)
        tf = eval_transform(cfg.img_size, cfg.mean, cfg.std)
        t0 = time.perf_counter()
        q, d = encode_split(model, data.query, tf, dev), encode_split(model, data.database, tf, dev)
        rows.append(
            row(
                f"teacher {Path(t).name} ({cfg.meta.get('objective', '?')}, epoch {cfg.meta.get('epoch')})",
                q,
                d,
                data,
                args.topk,
                time.perf_counter() - t0,
            )
        )
        print(rows[-1], flush=True)
    cfg = first_cfg
    torch.manual_seed(args.seed)
    untrained = build_model(type(cfg).from_dict({**cfg.to_dict(), "freeze_backbone": False}))
    tf = eval_transform(cfg.img_size, cfg.mean, cfg.std)
    t0 = time.perf_counter()
    q, d = (
        encode_split(untrained, data.query, tf, dev),
        encode_split(untrained, data.database, tf, dev),
    )
    rows.append(
        row(
            f"same architecture untrained ({cfg.backbone})",
            q,
            d,
            data,
            args.topk,
            time.perf_counter() - t0,
        )
    )
    print(rows[-1], flush=True)
    t0 = time.perf_counter()
    lsh = PixelLSH(cfg.bits, seed=args.seed).fit(pixels(data.train, cfg.img_size))
    q, d = (
        lsh.encode(pixels(data.query, cfg.img_size)),
        lsh.encode(pixels(data.database, cfg.img_size)),
    )
    rows.append(row("LSH on raw pixels", q, d, data, args.topk, time.perf_counter() - t0))
    print(rows[-1], flush=True)

    lines = [
        f"Protocol {data.protocol} (seed {args.seed}): {len(data.query)} queries, {len(data.database)} database, "
        f"mAP@{args.topk} tie-averaged ((pos) = ties broken by database position); health of "
        "the database codes (⚠ = collapsed)",
        "",
        "| model | bits | mAP | mAP (pos) | P@r<=2 | distinct codes | bit balance | largest bucket |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['bits']} | {r['map_tie_averaged']:.4f} | {r['map']:.4f} | "
        f"{r['precision_at_radius']:.4f} | {r['health']['distinct_codes']}"
        f"{' ⚠' if r['health']['collapsed'] else ''} | {r['health']['bit_balance']:.3f} | "
        f"{r['health']['largest_bucket_fraction']:.3f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    result = {"protocol": data.protocol, "seed": args.seed, "splits": data.summary(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
