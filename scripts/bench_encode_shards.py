#!/usr/bin/env python
"""Images/s of ``hashkd encode`` in 1 process vs N processes (``--shard I/N``), and a bit check.

For each process count P of ``--processes`` (default ``1 2``) the script starts P processes
``python -m hashkd encode MODEL --data DATA --shard I/P --threads T --num-workers W`` at once
(``T`` = ``--threads``, default the machine's cores // P), waits for all of them and records
the wall time from the first start to the last exit (process start, model loading, image
decoding and encoding: what a user waits for). It then merges the shards with
``hashkd codes merge`` and checks that the merged code set equals the one of the first
process count bit for bit (codes, ids, labels). Run it on an idle machine::

    python scripts/bench_encode_shards.py MODEL_DIR --data cifar10 --processes 1 2 --json-out out.json

Without a MODEL_DIR (``--tiny``) it builds a small random ViT artifact (img 32) to time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_model(path: Path) -> Path:
    import torch

    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(0)
    kwargs = {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2}
    cfg = ModelConfig(bits=64, img_size=32, backbone="vit_tiny_patch16_224", backbone_kwargs=kwargs)
    return save_artifact(build_model(cfg), path)


def run_processes(args: argparse.Namespace, count: int, out: Path) -> float:
    threads = args.threads or max(1, (os.cpu_count() or 1) // count)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    base = [sys.executable, "-m", "hashkd", "encode", str(args.model), "--data", args.data]
    base += ["--split", args.split, "--batch-size", str(args.batch_size), "--no-progress"]
    base += ["--threads", str(threads), "--num-workers", str(args.workers), "--out", str(out)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([*base, "--shard", f"{i}/{count}"], env=env, stderr=subprocess.PIPE)
        for i in range(count)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"encode failed: {err.decode()[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="model artifact directory (default: --tiny)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--split", default="all")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="per process")
    parser.add_argument(
        "--num-workers", dest="workers", type=int, default=0, help="DataLoader workers per process"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json-out", dest="json", default=None, help="write the results here")
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(parser, "scripts/bench_encode_shards.py")
    args = parser.parse_args()
    from hashkd.codes import merge_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            args.model = tiny_model(work / "tiny")
        rows, reference = [], None
        for count in args.processes:
            seconds = run_processes(args, count, work / f"p{count}")
            merged = merge_shards([work / f"p{count}"])
            if reference is None:
                reference = merged
            same = all(
                np.array_equal(getattr(merged, f), getattr(reference, f))
                for f in ("codes", "ids", "labels")
            )
            rows.append(
                {
                    "processes": count,
                    "images": len(merged),
                    "seconds": round(seconds, 3),
                    "images_per_s": round(len(merged) / seconds, 1),
                    "backend": merged.meta.get("backend"),
                    "identical_to_first": same,
                }
            )
    print("| processes | images | seconds | images/s | backend | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['images']} | {r['seconds']} | {r['images_per_s']} "
            f"| {r['backend']} | {r['identical_to_first']} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args) | {"model": str(args.model)}, "rows": rows}, indent=2)
        )
    return 0 if all(r["identical_to_first"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
