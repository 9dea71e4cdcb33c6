"""Data-loading throughput: two-view augmented batches from files vs. the in-memory cache.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_data.py --data cifar10 --images 5000

Reports wall-clock images per second and CPU milliseconds per image (main process; the
CPU figure is the robust one on a shared machine) for one pass (epoch) over ``--images`` training images of the
``cifar10-cpu`` protocol (or ``digits``), with the two-view augmentation and with the eval
transform at ``--img-size``, decoding the files each time and then from ``dataset.cache()``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from hashkd.data import eval_transform, load_dataset, make_loader, make_splits, two_view_transform


def epoch_rate(view, transform, batch_size: int, workers: int, seed: int) -> dict[str, float]:
    """Wall-clock images/s and main-process CPU ms/image of one shuffled pass."""
    loader = make_loader(
        view.with_transform(transform),
        batch_size,
        shuffle=True,
        seed=seed,
        num_workers=workers,
    )
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    n = sum(len(idx) for _, _, idx in loader)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"img_per_s": round(n / wall, 1), "cpu_ms_per_img": round(1e3 * cpu / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cifar10")
    ap.add_argument(
        "--images", type=int, default=5000, help="training images per pass (class-balanced)"
    )
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", dest="workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(ap, "scripts/bench_data.py")
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    scan = time.perf_counter() - t0
    splits = make_splits("digits" if args.data == "digits" else "cifar10-cpu", ds, seed=args.seed)
    train = splits["train"]
    if args.images < len(train):
        keep = np.random.default_rng(args.seed).choice(len(train), args.images, replace=False)
        train = train.subset(np.sort(keep))
    two, ev = two_view_transform(args.img_size), eval_transform(args.img_size)
    rates = {
        "two_view_files": epoch_rate(train, two, args.batch_size, args.workers, args.seed),
        "eval_files": epoch_rate(train, ev, args.batch_size, args.workers, args.seed),
    }
    t0 = time.perf_counter()
    train.cache(progress=False)
    cache_s = time.perf_counter() - t0
    rates["two_view_cached"] = epoch_rate(train, two, args.batch_size, args.workers, args.seed)
    rates["eval_cached"] = epoch_rate(train, ev, args.batch_size, args.workers, args.seed)
    print(
        json.dumps(
            {
                "data": args.data,
                "images": len(train),
                "img_size": args.img_size,
                "workers": args.workers,
                "load_dataset_s": round(scan, 2),
                "cache_build_s": round(cache_s, 2),
                **rates,
            }
        )
    )


if __name__ == "__main__":
    main()
