#!/usr/bin/env python
"""Distillation grid: KD losses x code lengths under one protocol, one table.

For every bit length the teacher artifact of that length is given (``--teacher 64=DIR``).
Rows: the teacher itself; the student with CIBHash only (no KD); the student with each
baseline loss; BRCD and its ablations. Every row reports symmetric mAP@topk (student codes on
both sides), asymmetric mAP@topk (teacher-coded database, student queries), precision within
Hamming radius 2 (symmetric), training wall time, student parameters and encode throughput.

    python scripts/bench_distill.py --teacher 64=/work/runs/teacher_vit6_64 --data cifar10 \
        --protocol cifar10-cpu --epochs 10 --out /work/runs/distill_grid

``--jobs N`` trains N students at a time in worker processes of ``--threads`` intra-op threads
each (e.g. ``--jobs 2 --threads 1`` on a 2-core machine); rows are saved as they finish, and
a re-run with the same ``--out`` skips the rows already in ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hashkd.data.transforms import eval_transform  # noqa: E402
from hashkd.metrics import evaluate_codes  # noqa: E402
from hashkd.models import load_artifact  # noqa: E402
from hashkd.training.common import encode_split  # noqa: E402
from hashkd.training.data_setup import prepare_data  # noqa: E402
from hashkd.training.distill import DistillConfig, distill  # noqa: E402

BRCD_OFF = {"use_cluster_filter": False, "use_offset_positive": False, "use_bit_mask": False}
#: row name -> (losses, loss options)
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "no KD (CIBHash only)": ([], {}),
    "align (same-view code alignment)": (["align"], {}),
    "sp": (["sp"], {}),
    "relative_teacher": (["relative_teacher"], {}),
    "absolute_teacher": (["absolute_teacher"], {}),
    "rkd": (["rkd"], {}),
    "compress": (["compress"], {"compress": {"memory_size": 4096}}),
    "lsh": (["lsh"], {}),
    "crd": (["crd"], {}),
    "BRCD: contrastive KD alone": (["brcd"], {"brcd": dict(BRCD_OFF)}),
    "BRCD: + cluster filtering": (["brcd"], {"brcd": {"use_bit_mask": False}}),
    "BRCD: + bit mask (full)": (["brcd"], {"brcd": {}}),
}


def encode_speed(model, img_size: int, batch: int = 64, seconds: float = 3.0) -> float:
    model.eval()
    x = torch.randn(batch, 3, img_size, img_size)
    with torch.no_grad():
        model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - t0)


def student_dir(out: Path, bits: int, name: str) -> Path:
    return (
        out
        / f"{bits}bits"
        / name.split(":")[0].split(" ")[0].lower()
        / name.replace(" ", "_")
        .replace(":", "")
        .replace("(", "")
        .replace(")", "")
        .replace("+", "plus")
    )


def train_row(
    args: argparse.Namespace, bits: int, tdir: str, name: str, tdb: np.ndarray, threads: int | None
) -> dict:
    """Distill one student and evaluate it: one row of the table (runs in a worker with --jobs)."""
    if threads:
        torch.set_num_threads(threads)
    data = prepare_data(args.data, None, args.protocol, args.seed)
    dev = torch.device("cpu")
    losses, options = VARIANTS[name]
    sdir = student_dir(Path(args.out), bits, name)
    t0 = time.perf_counter()
    distill(
        DistillConfig(
            out=str(sdir),
            teacher=tdir,
            student=args.student,
            losses=list(losses),
            loss_options=json.loads(json.dumps(options)),
            data=args.data,
            protocol=args.protocol,
            seed=args.seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            view_bank=args.view_bank,
            max_train=args.max_train,
            progress=False,
            val_every=max(1, args.epochs // 2),
        )
    )
    train_s = time.perf_counter() - t0
    student = load_artifact(sdir)
    stf = eval_transform(student.config.img_size, student.config.mean, student.config.std)
    sq, sdb = (
        encode_split(student, data.query, stf, dev),
        encode_split(student, data.database, stf, dev),
    )
    sym = evaluate_codes(
        sq, sdb, data.query.labels, data.database.labels, topk=args.topk, curves=False
    )
    asym = evaluate_codes(
        sq, tdb, data.query.labels, data.database.labels, topk=args.topk, curves=False
    )
    return {
        "bits": bits,
        "model": name,
        "map_sym": sym["map"],
        "map_asym": asym["map"],
        "p_r2": sym["precision_at_radius"],
        "train_s": round(train_s, 1),
        "params": sum(p.numel() for p in student.parameters()),
        "images_per_s": encode_speed(student, student.config.img_size, seconds=args.speed_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="BITS=DIR",
        help="teacher artifact per code length, repeatable (e.g. 64=runs/teacher64)",
    )
    ap.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated row names to run (default: all); known: {', '.join(VARIANTS)}",
    )
    ap.add_argument("--student", default="mobilenetv3_small_100")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--protocol", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--view-bank", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--topk", type=int, default=1000)
    ap.add_argument(
        "--speed-seconds",
        type=float,
        default=3.0,
        help="timed seconds of the img/s column (default 3)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="students trained at a time, in worker processes (default 1)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads per student (default: torch's own; with --jobs N use cores / N)",
    )
    ap.add_argument(
        "--out", required=True, help="directory for students, results.json and results.md"
    )
    args = ap.parse_args(argv)
    teachers = {}
    for item in args.teacher:
        bits, _, path = item.partition("=")
        teachers[int(bits)] = path
    names = list(VARIANTS) if not args.variants else [v.strip() for v in args.variants.split(",")]
    for n in names:
        if n not in VARIANTS:
            ap.error(f"unknown variant {n!r}")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        ap.error(
            f"--jobs {args.jobs} / --threads {args.threads} is not valid: expected positive integers"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.data, None, args.protocol, args.seed)
    dev = torch.device("cpu")
    results_path = out / "results.json"
    rows = json.loads(results_path.read_text())["rows"] if results_path.exists() else []
    done = {(r["bits"], r["model"]) for r in rows}

    def save() -> None:
        results_path.write_text(
            json.dumps(
                {
                    "protocol": data.protocol,
                    "seed": args.seed,
                    "epochs": args.epochs,
                    "student": args.student,
                    "rows": rows,
                },
                indent=2,
            )
        )
        write_markdown(rows, out / "results.md", data.protocol, args.topk)

    pending = []  # (bits, teacher dir, row name, teacher database codes)
    for bits, tdir in sorted(teachers.items()):
        teacher = load_artifact(tdir)
        tf = eval_transform(teacher.config.img_size, teacher.config.mean, teacher.config.std)
        tq, tdb = (
            encode_split(teacher, data.query, tf, dev),
            encode_split(teacher, data.database, tf, dev),
        )
        if (bits, "teacher") not in done:
            r = evaluate_codes(
                tq, tdb, data.query.labels, data.database.labels, topk=args.topk, curves=False
            )
            rows.append(
                {
                    "bits": bits,
                    "model": "teacher",
                    "map_sym": r["map"],
                    "map_asym": None,
                    "p_r2": r["precision_at_radius"],
                    "train_s": None,
                    "params": sum(p.numel() for p in teacher.parameters()),
                    "images_per_s": encode_speed(
                        teacher, teacher.config.img_size, seconds=args.speed_seconds
                    ),
                }
            )
            save()
        pending += [(bits, tdir, name, tdb) for name in names if (bits, name) not in done]

    def finished(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()

    if args.jobs == 1:
        for bits, tdir, name, tdb in pending:
            finished(train_row(args, bits, tdir, name, tdb, args.threads))
    else:
        # spawn, not fork: forking a process whose OpenMP pool has run can deadlock the child
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {
                pool.submit(train_row, args, b, t, n, d, args.threads): (b, n)
                for b, t, n, d in pending
            }
            for fut in as_completed(futures):
                finished(fut.result())
    print((out / "results.md").read_text())
    return 0


def write_markdown(rows: list[dict], path: Path, protocol: str, topk: int) -> None:
    lines = [
        f"Protocol {protocol}; mAP@{topk}; asymmetric = teacher-coded database, student queries.",
        "",
        "| bits | model | mAP sym | mAP asym | P@r<=2 | train s | params | img/s (b64) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(["teacher", *VARIANTS])}
    for r in sorted(rows, key=lambda r: (r["bits"], order.get(r["model"], len(order)))):
        asym = "–" if r["map_asym"] is None else f"{r['map_asym']:.4f}"
        train = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
        lines.append(
            f"| {r['bits']} | {r['model']} | {r['map_sym']:.4f} | {asym} | {r['p_r2']:.4f} | {train} | "
            f"{r['params'] / 1e6:.2f}M | {r['images_per_s']:.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
