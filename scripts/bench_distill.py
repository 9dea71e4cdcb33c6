#!/usr/bin/env python
"""Distillation grid: KD losses x code lengths x seeds under one protocol, one table.

For every bit length the teacher artifact of that length is given (``--teacher 64=DIR``).
Rows: the teacher itself; the student with CIBHash only (no KD); the student with each
baseline loss; BRCD and its ablations. Every row reports, as mean +- std over ``--seeds``
(each seed draws the protocol's splits and the student's initialisation): symmetric mAP@topk
(student codes on both sides) and asymmetric mAP@topk (teacher-coded database, student
queries), each tie-averaged (the headline: the expected mAP under a random order of equal
Hamming distances) with the position-broken value beside it; precision within Hamming radius
2 (symmetric); the health of the student's database codes (distinct codes, bit balance,
largest bucket; a warning when collapsed); the loss weight used; the BRCD kept-bit fraction
(from the run metadata's ``losses`` rows, "-" when absent); training and wall time; student
parameters and encode throughput.

    python scripts/bench_distill.py --teacher 64=runs/teacher_vit6_64 --data cifar10 \
        --split-protocol cifar10-cpu --epochs 10 --seeds 0,1,2 --out runs/distill_grid

``--pool SPEC`` distils every row on an unlabeled pool instead of the training split (e.g.
``train``: CIFAR-10's 50,000 training images minus the validation images and queries), and
``--lr-schedule cosine --warmup-epochs N`` sets the students' learning-rate curve; both are
written to ``results.json`` with the other settings of the run.

``--pretrain-weights PATH.safetensors`` starts every student from ``hashkd pretrain`` backbone
weights (self-supervised, e.g. on the same pool). ``--loss-opt LOSS.OPTION=VALUE`` (repeatable, as in ``hashkd distill``) sets a loss option on
the rows that use that loss, e.g. ``--loss-opt brcd.margin=0.2`` for the three BRCD rows; the
options are written to ``results.json`` (``loss_options``) and each BRCD run's mask report.
``--loss-weight LOSS=WEIGHT`` (repeatable) sets the weight of that loss in every row that uses
it (default: the loss's ``default_weight``), e.g. a weight chosen by ``scripts/sweep_distill.py``;
written to ``results.json`` (``loss_weights``) and the table's weight column.

The embedding-distillation baselines (sp, relative_teacher, absolute_teacher, rkd, compress,
lsh, crd) and the code alignment (align) have a second row each, ``NAME on logits``, that
distils both networks' continuous pre-sign hash logits instead of their ±1 codes (``hashkd
distill``'s ``kd_inputs="logits"``), as their papers distil embeddings; so has BRCD (full)
(its similarities on logits, its clusters and masks still of the teacher's codes), judged
under the table like BRCD (full). The table's code-health cells are those of each row's worst
seed (a collapse in one seed is not averaged away) and its BRCD cell names the cluster count k,
the mask mode and the margin each run used. Under the table, BRCD (full) is compared with every
baseline row per length and protocol (difference of the means over the seeds both rows have;
"beyond the spread" when it exceeds the sum of the two sample stds), baselines that collapsed
in any seed left out, and
BRCD (full) is set against the teacher of each of its seeds (the same splits): its symmetric
mAP as a share of the teacher's and its asymmetric mAP against the teacher's less one point;
so is every baseline row, each line naming it.

Provenance: ``results.json`` records, beside the settings (with ``topk`` and ``val_every``), the
``inputs`` — each teacher's path, model digest (its tensors) and the sha256 of its weights file,
and the sha256 of ``--student-weights`` — and the ``code_version`` (hashkd version, git commit,
uncommitted changes) of the file and of every row. A re-run whose inputs differ in content
(another teacher or weights file at the same path) is refused like one with other settings.
``scripts/distill_tables.py`` rebuilds the tables of docs/bench-distill.md from the results
files kept in the repository (benchmarks/distill/).

``--jobs N`` trains N students at a time in worker processes of ``--threads`` intra-op threads
each (e.g. ``--jobs 2 --threads 1`` on a 2-core machine); rows are saved as they finish, and
a re-run with the same ``--out`` skips the (bits, row, seed) runs already in ``results.json``
and resumes a student interrupted mid-training from its last finished epoch. A re-run whose
settings (epochs, student, pool, schedule, loss options, student weights, topk...) differ from those
``results.json`` recorded is refused: one ``--out`` holds one table.
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hashkd.cli._common import parse_loss_options  # noqa: E402
from hashkd.data import use_data_options  # noqa: E402
from hashkd.data.transforms import eval_transform  # noqa: E402
from hashkd.io import atomic_write_json  # noqa: E402
from hashkd.losses.registry import get_loss_class, list_losses  # noqa: E402
from hashkd.losses.run_report import (  # noqa: E402
    brcd_kept_fraction,
    brcd_setup,
    recorded_weights,
)
from hashkd.metrics import (  # noqa: E402
    code_health,
    collapse_warning,
    evaluate_codes,
    mean_std_text,
    worst_health,
)
from hashkd.models import load_artifact  # noqa: E402
from hashkd.models.complexity import encode_images_per_second  # noqa: E402
from hashkd.training.common import encode_split  # noqa: E402
from hashkd.training.data_setup import prepare_data  # noqa: E402
from hashkd.training.distill import DistillConfig, distill  # noqa: E402
from hashkd.training.provenance import code_version, input_mismatch, input_record  # noqa: E402
from hashkd.training.run_dir import CHECKPOINT_NAME  # noqa: E402

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
#: the embedding-distillation baselines (and the code alignment) also distil both networks'
#: continuous pre-sign logits (``hashkd distill`` kd_inputs="logits"), as their papers distil
#: embeddings: row "NAME on logits"
LOGITS_SUFFIX = " on logits"
EMBEDDING_BASELINES = (
    "align (same-view code alignment)",
    "sp",
    "relative_teacher",
    "absolute_teacher",
    "rkd",
    "compress",
    "lsh",
    "crd",
)
VARIANTS.update({f"{name}{LOGITS_SUFFIX}": VARIANTS[name] for name in EMBEDDING_BASELINES})
#: the claimed BRCD row and its twin on logits (similarities of logits, clusters of codes),
#: each judged under the table against the baselines and the teacher
BRCD_FULL = "BRCD: + bit mask (full)"
BRCD_CLAIMED = {BRCD_FULL: "BRCD (full)", f"{BRCD_FULL}{LOGITS_SUFFIX}": "BRCD (full) on logits"}
VARIANTS[f"{BRCD_FULL}{LOGITS_SUFFIX}"] = VARIANTS[BRCD_FULL]


def row_kd_inputs(name: str) -> str:
    """What a row's KD losses compare: "logits" for the "... on logits" rows, else "codes"."""
    return "logits" if name.endswith(LOGITS_SUFFIX) else "codes"


#: the keys a row of results.json holds (rows of an older layout are refused)
ROW_KEYS = ("bits", "model", "seed", "map_sym", "map_sym_position", "health")


def student_dir(out: Path, bits: int, name: str, seed: int) -> Path:
    return (
        out
        / f"{bits}bits"
        / name.split(":")[0].split(" ")[0].lower()
        / name.replace(" ", "_")
        .replace(":", "")
        .replace("(", "")
        .replace(")", "")
        .replace("+", "plus")
        / f"seed{seed}"
    )


def health_summary(codes: np.ndarray) -> dict[str, Any]:
    h = code_health(codes)
    keys = (
        "num_codes",
        "distinct_codes",
        "effective_codes",
        "bit_balance",
        "largest_bucket_fraction",
        "collapse_reasons",
        "collapsed",
    )
    return {k: h[k] for k in keys}


def row_weights(losses: list[str], chosen: dict[str, float]) -> list[float] | None:
    """The weights of a row's ``losses``: each one's ``--loss-weight``, else its default weight;
    None (every default) when no loss of the row has one."""
    if not set(losses) & set(chosen):
        return None
    return [chosen.get(loss, get_loss_class(loss).default_weight) for loss in losses]


def parse_loss_weights(items: list[str] | None) -> dict[str, float]:
    """``["sp=3000", "crd=0.8"]`` -> ``{"sp": 3000.0, "crd": 0.8}``; ValueError naming a bad item."""
    out: dict[str, float] = {}
    for item in items or []:
        loss, sep, text = item.partition("=")
        try:
            weight = float(text)
        except ValueError:
            weight = -1.0
        if not sep or loss not in list_losses() or not weight > 0:
            raise ValueError(
                f"--loss-weight {item!r} is not valid: expected LOSS=WEIGHT with LOSS one of "
                f"{', '.join(list_losses())} and a positive WEIGHT"
            )
        out[loss] = weight
    return out


def row_losses(name: str, extra: dict[str, dict[str, Any]]) -> tuple[list[str], dict]:
    """A row's losses and loss options, with the ``--loss-opt`` options of its losses merged in
    (e.g. ``brcd.margin=0.2`` reaches the three BRCD rows and no other)."""
    losses, base = VARIANTS[name]
    options = json.loads(json.dumps(base))  # a deep copy: VARIANTS stays as written
    for loss, opts in extra.items():
        if loss in losses:
            options.setdefault(loss, {}).update(opts)
    return list(losses), options


#: settings an older results.json did not record, with the value they had then
SETTINGS_ADDED_LATER = {"loss_options": {}, "student_weights": None, "loss_weights": {}}


def val_every(args: argparse.Namespace) -> int:
    """Validate every N epochs: ``--val-every``, else half the epochs."""
    return args.val_every or max(1, args.epochs // 2)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every row of one ``--out`` shares (written to results.json, checked on a re-run)."""
    return {
        "topk": args.topk,
        "val_every": val_every(args),
        "data": args.data,
        "epochs": args.epochs,
        "student": args.student,
        "batch_size": args.batch_size,
        "view_bank": args.view_bank,
        "max_train": args.max_train,
        "pool": args.pool,
        "lr_schedule": args.lr_schedule,
        "warmup_epochs": args.warmup_epochs,
        "loss_options": args.loss_options,
        "loss_weights": args.loss_weights,
        "student_weights": args.student_weights,
    }


def settings_mismatch(stored: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``"key: stored -> now"`` for each setting a results.json recorded otherwise. A setting an
    older file lacks is compared with its value from then (:data:`SETTINGS_ADDED_LATER`), or
    not at all when that is unknown."""
    out = []
    for key, value in settings.items():
        if key in stored:
            before = stored[key]
        elif key in SETTINGS_ADDED_LATER:
            before = SETTINGS_ADDED_LATER[key]
        else:
            continue
        if before != value:
            out.append(f"{key}: {before!r} -> {value!r}")
    return out


def evaluate_pair(q: np.ndarray, d: np.ndarray, data, topk: int) -> dict[str, Any]:
    return evaluate_codes(q, d, data.query.labels, data.database.labels, topk=topk, curves=False)


def train_row(*row: Any) -> dict:
    """:func:`_train_row` with image files decoded without progress bars (it runs in a worker
    with --jobs, which does not inherit the parent's data options)."""
    with use_data_options(progress=False):
        return _train_row(*row)


def _train_row(
    args: argparse.Namespace,
    bits: int,
    tdir: str,
    name: str,
    seed: int,
    tdb: np.ndarray,
    threads: int | None,
) -> dict:
    """Distill one student and evaluate it: one seed of one row."""
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    data = prepare_data(args.data, None, args.protocol, seed)
    dev = torch.device("cpu")
    losses, options = row_losses(name, args.loss_options)
    sdir = student_dir(Path(args.out), bits, name, seed)
    resume = (sdir / CHECKPOINT_NAME).is_file()  # an interrupted run continues from its last epoch
    t0 = time.perf_counter()
    distill(
        DistillConfig(
            out=str(sdir),
            teacher=tdir,
            student=args.student,
            losses=list(losses),
            weights=row_weights(losses, args.loss_weights),
            loss_options=options,
            data=args.data,
            protocol=args.protocol,
            seed=seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            view_bank=args.view_bank,
            max_train=args.max_train,
            pool=args.pool,
            student_weights=args.student_weights,
            lr_schedule=args.lr_schedule,
            warmup_epochs=args.warmup_epochs,
            kd_inputs=row_kd_inputs(name),
            progress=False,
            val_every=val_every(args),
            resume=resume,
            teacher_cache=args.teacher_cache,
        )
    )
    train_s = time.perf_counter() - t0
    student = load_artifact(sdir)
    stf = eval_transform(student.config.img_size, student.config.mean, student.config.std)
    sq, sdb = (
        encode_split(student, data.query, stf, dev),
        encode_split(student, data.database, stf, dev),
    )
    sym, asym = evaluate_pair(sq, sdb, data, args.topk), evaluate_pair(sq, tdb, data, args.topk)
    wall_s = time.perf_counter() - t_start
    return {
        "bits": bits,
        "model": name,
        "seed": seed,
        "weights": recorded_weights(student.config.meta),
        "map_sym": sym["map_tie_averaged"],
        "map_sym_position": sym["map"],
        "map_asym": asym["map_tie_averaged"],
        "map_asym_position": asym["map"],
        "p_r2": sym["precision_at_radius"],
        "health": health_summary(sdb),
        "brcd_kept": brcd_kept_fraction(student.config.meta),
        "brcd": brcd_setup(student.config.meta),
        "kd_inputs": student.config.meta.get("kd_inputs", "codes"),
        "teacher_digest": student.config.meta.get("teacher_digest"),
        "code_version": code_version(),
        "train_s": round(train_s, 1),
        "wall_s": round(wall_s, 1),
        "params": sum(p.numel() for p in student.parameters()),
        "images_per_s": encode_images_per_second(student, seconds=args.speed_seconds),
    }


def teacher_row(args, bits: int, teacher, seed: int, tq, tdb, data) -> dict:
    r = evaluate_pair(tq, tdb, data, args.topk)
    return {
        "bits": bits,
        "model": "teacher",
        "seed": seed,
        "weights": [],
        "map_sym": r["map_tie_averaged"],
        "map_sym_position": r["map"],
        "map_asym": None,
        "map_asym_position": None,
        "p_r2": r["precision_at_radius"],
        "health": health_summary(tdb),
        "brcd_kept": None,
        "brcd": None,
        "kd_inputs": None,
        "teacher_digest": None,
        "code_version": code_version(),
        "train_s": None,
        "wall_s": None,
        "params": sum(p.numel() for p in teacher.parameters()),
        "images_per_s": encode_images_per_second(teacher, seconds=args.speed_seconds),
    }


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r} is not valid: expected distinct non-negative integers such as 0,1,2"
        )
    return seeds


def main(argv: list[str] | None = None) -> int:
    """The grid; image files are decoded without progress bars (the log holds one line per row)."""
    with use_data_options(progress=False):
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
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
        help=(
            "comma-separated row names to run (default: all; the teacher's rows always run, "
            f"'teacher' alone runs only them); known: {', '.join(VARIANTS)}"
        ),
    )
    ap.add_argument("--backbone", dest="student", default="mobilenetv3_small_100")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--split-protocol", dest="protocol", default=None)
    ap.add_argument("--seed", type=int, default=0, help="the one seed when --seeds is not given")
    ap.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="comma-separated seeds, each row run once per seed (e.g. 0,1,2); default: --seed",
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--view-bank", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument(
        "--pool",
        default=None,
        metavar="SPEC",
        help="distil on an unlabeled pool (hashkd distill --pool), e.g. train; default: the training split",
    )
    ap.add_argument(
        "--teacher-cache",
        default=None,
        metavar="DIR",
        help=(
            "keep the teacher's logits of the training images and view banks in DIR and reuse "
            "them across rows, seeds' resumes and re-runs (hashkd distill --teacher-cache; the "
            "results do not change, so it is not a setting of the table)"
        ),
    )
    ap.add_argument(
        "--pretrain-weights",
        dest="student_weights",
        default=None,
        metavar="PATH.safetensors",
        help="start every student from `hashkd pretrain` backbone weights (hashkd distill --pretrain-weights)",
    )
    ap.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument(
        "--val-every", type=int, default=None, help="validate every N epochs (default: epochs // 2)"
    )
    ap.add_argument(
        "--loss-opt",
        action="append",
        metavar="LOSS.OPTION=VALUE",
        help="a loss option for the rows that use that loss, repeatable (e.g. brcd.margin=0.2)",
    )
    ap.add_argument(
        "--loss-weight",
        action="append",
        metavar="LOSS=WEIGHT",
        help="the weight of LOSS in the rows that use it, repeatable (e.g. sp=300; default: "
        "each loss's default weight)",
    )
    ap.add_argument("--k", dest="topk", type=int, default=1000)
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
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(ap, "scripts/bench_distill.py")
    args = ap.parse_args(argv)
    teachers = {}
    for item in args.teacher:
        bits, _, path = item.partition("=")
        teachers[int(bits)] = path
    names = list(VARIANTS) if not args.variants else [v.strip() for v in args.variants.split(",")]
    # the teacher's rows are always measured; ``--variants teacher`` asks for them alone
    names = [n for n in names if n != "teacher"]
    for n in names:
        if n not in VARIANTS:
            ap.error(f"unknown variant {n!r}")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        ap.error(
            f"--jobs {args.jobs} / --threads {args.threads} is not valid: expected positive integers"
        )
    try:
        args.loss_options = parse_loss_options(args.loss_opt)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        args.loss_weights = parse_loss_weights(args.loss_weight)
    except ValueError as exc:
        ap.error(str(exc))
    used = {loss for n in names for loss in VARIANTS[n][0]}
    for flag, chosen in (("--loss-opt", args.loss_options), ("--loss-weight", args.loss_weights)):
        unused = sorted(set(chosen) - used)
        if unused:
            ap.error(f"{flag} names {', '.join(unused)}, a loss none of the chosen rows uses")
    seeds = args.seeds or [args.seed]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    stored = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = stored.get("rows", [])
    settings = run_settings(args)
    differing = settings_mismatch(stored, settings) if rows else []
    if differing:
        ap.error(
            f"{results_path} holds rows of other settings ({'; '.join(differing)}): "
            "its rows would be mixed with these in one table: expected a new --out"
        )
    if any(not all(k in r for k in ROW_KEYS) for r in rows):
        ap.error(
            f"{results_path} holds rows of an older bench_distill (position-broken mAP, no seed): "
            "expected a new --out"
        )
    for bits, path in teachers.items():
        if not Path(path, "model.safetensors").is_file():
            ap.error(f"--teacher {bits}={path}: no teacher artifact there (model.safetensors)")
    if args.student_weights and not Path(args.student_weights).is_file():
        ap.error(f"--student-weights {args.student_weights}: no such file")
    inputs = input_record(teachers, args.student_weights)
    if stored.get("inputs"):
        inputs["teachers"] = {**stored["inputs"].get("teachers", {}), **inputs["teachers"]}
    changed = input_mismatch(stored.get("inputs"), inputs)
    if rows and changed:
        ap.error(
            f"{results_path} was made from other inputs ({'; '.join(changed)}): "
            "its rows would be mixed with these in one table: expected a new --out"
        )
    done = {(r["bits"], r["model"], r["seed"]) for r in rows}
    dev = torch.device("cpu")
    data_by_seed = {seed: prepare_data(args.data, None, args.protocol, seed) for seed in seeds}
    protocol = data_by_seed[seeds[0]].protocol
    if rows and stored.get("protocol", protocol) != protocol:
        ap.error(
            f"{results_path} holds rows of protocol {stored['protocol']!r}, not {protocol!r}: "
            "expected a new --out"
        )

    def save() -> None:
        atomic_write_json(
            results_path,
            {
                "protocol": protocol,
                "seeds": sorted({r["seed"] for r in rows}),
                **settings,
                "inputs": inputs,
                "code_version": code_version(),
                "rows": rows,
            },
        )
        write_markdown(rows, out / "results.md", protocol, args.topk)

    def finished(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        warning = collapse_warning(
            row["health"], f"{row['bits']}-bit {row['model']} (seed {row['seed']}) database codes"
        )
        if warning:
            print(warning, file=sys.stderr, flush=True)
        save()

    pending = []  # (bits, teacher dir, row name, seed, teacher database codes)
    for bits, tdir in sorted(teachers.items()):
        teacher = load_artifact(tdir)
        tf = eval_transform(teacher.config.img_size, teacher.config.mean, teacher.config.std)
        for seed, data in data_by_seed.items():
            todo = [name for name in names if (bits, name, seed) not in done]
            if not todo and (bits, "teacher", seed) in done:
                continue
            tq, tdb = (
                encode_split(teacher, data.query, tf, dev),
                encode_split(teacher, data.database, tf, dev),
            )
            if (bits, "teacher", seed) not in done:
                finished(teacher_row(args, bits, teacher, seed, tq, tdb, data))
            pending += [(bits, tdir, name, seed, tdb) for name in todo]

    if args.jobs == 1:
        for bits, tdir, name, seed, tdb in pending:
            finished(train_row(args, bits, tdir, name, seed, tdb, args.threads))
    else:
        # spawn, not fork: forking a process whose OpenMP pool has run can deadlock the child
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [
                pool.submit(train_row, args, b, t, n, s, d, args.threads)
                for b, t, n, s, d in pending
            ]
            for fut in as_completed(futures):
                finished(fut.result())
    save()
    print((out / "results.md").read_text())
    return 0


def weight_text(weights: list[float]) -> str:
    return "+".join(f"{w:g}" for w in weights) if weights else "-"


def brcd_text(group: list[dict]) -> str:
    """The BRCD cell: cluster count k (all values over the seeds), mask mode and margin."""
    setups = [r.get("brcd") for r in group if r.get("brcd")]
    if not setups:
        return "-"
    ks = sorted({s["k"] for s in setups if s.get("k") is not None})
    modes = sorted({str(s.get("mask_mode")) for s in setups})
    margins = sorted({s.get("margin") for s in setups if s.get("margin") is not None})
    k = "/".join(map(str, ks)) or "?"
    margin = "/".join(f"{m:g}" for m in margins) or "?"
    return f"k={k}, {'/'.join(modes)}, m={margin}"


def table_lines(rows: list[dict], protocol: str, topk: int) -> list[str]:
    """The table: one line per (bits, row), mean ± std over its seeds (n), the code health of
    its worst seed, weights, BRCD's k and mask."""
    lines = [
        f"Protocol {protocol}; mAP@{topk}, mean ± std over n seeds (each seed: its own splits "
        "and student init). mAP = tie-averaged (expected under a random order of equal Hamming "
        "distances); (pos) = ties broken by database position. Asymmetric = teacher-coded "
        "database, student queries. Health of the symmetric database codes **of the worst "
        "seed** (collapsed first, then the fewest effective codes): distinct codes, bit balance "
        "(mean |p - 0.5|), largest bucket (share of items with the most frequent code); ⚠ = "
        "collapsed in some seed. kept bits = BRCD mask's mean kept-bit fraction; BRCD = its "
        'cluster count k, mask mode and margin. Rows "... on logits" distil both networks\' '
        "pre-sign logits instead of their ±1 codes.",
        "",
        "| bits | model | weight | n | mAP sym | mAP sym (pos) | mAP asym | mAP asym (pos) "
        "| P@r<=2 | distinct codes | bit balance | largest bucket | kept bits | BRCD | train s "
        "| wall s | params | img/s (b64) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(["teacher", *VARIANTS])}
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["bits"], r["model"]), []).append(r)
    warnings = []
    for (bits, model), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])
    ):
        group = sorted(group, key=lambda r: r["seed"])
        collapsed = [r["seed"] for r in group if r["health"]["collapsed"]]
        pos, worst = worst_health([r["health"] for r in group])
        distinct = str(worst["distinct_codes"])
        if len(group) > 1:
            distinct += f" (seed {group[pos]['seed']})"
        if collapsed:
            distinct += " ⚠"
            warnings.append(
                f"- {bits} bits, {model}: codes collapsed in seed(s) "
                f"{', '.join(map(str, collapsed))}; its mAP is not a fair comparison."
            )
        cells = [
            str(bits),
            model,
            weight_text(group[0]["weights"]),
            str(len(group)),
            mean_std_text([r["map_sym"] for r in group]),
            mean_std_text([r["map_sym_position"] for r in group]),
            mean_std_text([r["map_asym"] for r in group]),
            mean_std_text([r["map_asym_position"] for r in group]),
            mean_std_text([r["p_r2"] for r in group]),
            distinct,
            f"{worst['bit_balance']:.3f}",
            f"{worst['largest_bucket_fraction']:.3f}",
            mean_std_text([r["brcd_kept"] for r in group], digits=2),
            brcd_text(group),
            mean_std_text([r["train_s"] for r in group], digits=0),
            mean_std_text([r["wall_s"] for r in group], digits=0),
            f"{group[0]['params'] / 1e6:.2f}M",
            f"{np.mean([r['images_per_s'] for r in group]):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if warnings:
        lines += ["", "Collapsed codes:", *warnings]
    for model, label in BRCD_CLAIMED.items():
        compared = comparison_lines(rows, model)
        if compared:
            lines += ["", f"{label} against the baselines, difference of the means:", *compared]
        shares = teacher_share_lines(rows, model)
        if shares:
            lines += ["", f"{label} against the teacher of the same seed's splits:", *shares]
    baseline_shares = [
        line for name in BASELINES for line in teacher_share_lines(rows, name, named=True)
    ]
    if baseline_shares:
        lines += ["", "The baselines against the same goals:", *baseline_shares]
    return lines


#: the issue's asymmetric goal: the student's asymmetric mAP within this of the teacher's
ASYMMETRIC_GOAL_MARGIN = 0.01


def teacher_share_lines(rows: list[dict], model: str = BRCD_FULL, named: bool = False) -> list[str]:
    """Per code length, ``model`` against the teacher row of each of its seeds (the same
    splits): its symmetric mAP as a share of the teacher's (mean ± sample std over the seeds,
    mean - std, each seed's value) and its asymmetric mAP minus the teacher's symmetric mAP
    less one point, in mAP points. No line for a length where a seed lacks its teacher row.
    ``named`` puts the model's name after the length (``- 64 bits, MODEL: ...``)."""
    teachers = {(r["bits"], r["seed"]): r for r in rows if r["model"] == "teacher"}
    out = []
    for bits in sorted({r["bits"] for r in rows if r["model"] == model}):
        mine = sorted((r for r in rows if r["bits"] == bits and r["model"] == model),
                      key=lambda r: r["seed"])  # fmt: skip
        if any((bits, r["seed"]) not in teachers for r in mine):
            continue
        ref = [teachers[(bits, r["seed"])]["map_sym"] for r in mine]
        share = np.array([r["map_sym"] / t for r, t in zip(mine, ref, strict=True)]) * 100
        seeds = ", ".join(f"seed {r['seed']} {v:.1f}%" for r, v in zip(mine, share, strict=True))
        if len(share) > 1:
            std = share.std(ddof=1)
            text = (
                f"{share.mean():.1f}% ± {std:.1f}% of the teacher's "
                f"(mean - std {share.mean() - std:.1f}%; {seeds})"
            )
        else:
            text = f"{share.mean():.1f}% of the teacher's ({seeds}; one seed: spread unknown)"
        name = f", {model}" if named else ""
        line = f"- {bits} bits{name}: symmetric mAP at {text}"
        asym = [r["map_asym"] for r in mine]
        if all(a is not None for a in asym):
            gap = (np.array(asym) - (np.array(ref) - ASYMMETRIC_GOAL_MARGIN)) * 100
            spread = f" ± {gap.std(ddof=1):.2f}" if len(gap) > 1 else ""
            line += (
                f"; asymmetric mAP {gap.mean():+.2f}{spread} pt against the teacher's symmetric "
                "mAP minus 1 point"
            )
        out.append(line + ".")
    return out


#: the rows a BRCD claim is compared against: every baseline loss, on codes or logits
BASELINES = tuple(
    name for name in VARIANTS if not name.startswith("BRCD") and name != "no KD (CIBHash only)"
)


def comparison_lines(rows: list[dict], model: str = BRCD_FULL) -> list[str]:
    """Per code length and protocol (sym, asym): ``model`` against every baseline row, mean ±
    sample std over the seeds both rows have (each seed has its own splits, so only the same
    seeds compare; the seeds are named when they are fewer than ``model``'s). "beyond the
    spread" when the difference of the means exceeds the sum of the two stds (at least 2 common
    seeds); a baseline that collapsed in any seed is left out of the comparison and named. No
    line for a length without ``model``."""
    out = []
    by_key: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["bits"], r["model"]), []).append(r)
    for bits in sorted({b for b, _ in by_key}):
        mine = by_key.get((bits, model))
        others = [(name, by_key[(bits, name)]) for name in BASELINES if (bits, name) in by_key]
        if not mine or not others:
            continue
        collapsed = [n for n, g in others if any(r["health"]["collapsed"] for r in g)]
        kept = [(n, g) for n, g in others if n not in collapsed]
        mine_by_seed = {r["seed"]: r for r in mine}
        for key, label in (("map_sym", "symmetric"), ("map_asym", "asymmetric")):
            verdicts = []
            for name, g in kept:
                common = sorted(mine_by_seed.keys() & {r["seed"] for r in g})
                if not common:
                    verdicts.append(f"{name} (no seed in common)")
                    continue
                theirs = {r["seed"]: r for r in g}
                m = np.array([mine_by_seed[sd][key] for sd in common], dtype=float)
                o = np.array([theirs[sd][key] for sd in common], dtype=float)
                diff = m.mean() - o.mean()
                on = (
                    ""
                    if len(common) == len(mine_by_seed)
                    else f"seed{'s' if len(common) > 1 else ''} {', '.join(map(str, common))}: "
                )
                if len(common) < 2:
                    verdict = "one seed: spread unknown"
                else:
                    spread = m.std(ddof=1) + o.std(ddof=1)
                    if diff > spread:
                        verdict = "above beyond the spread"
                    elif diff < -spread:
                        verdict = "BELOW beyond the spread"
                    else:
                        verdict = "within the spread"
                verdicts.append(f"{name} {diff * 100:+.2f} pt ({on}{verdict})")
            line = f"- {bits} bits, {label}: {model} vs " + "; ".join(verdicts)
            if collapsed:
                line += f". Left out (collapsed in some seed): {', '.join(collapsed)}"
            out.append(line + ".")
    return out


def write_markdown(rows: list[dict], path: Path, protocol: str, topk: int) -> None:
    """:func:`table_lines` to ``path``."""
    path.write_text("\n".join(table_lines(rows, protocol, topk)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
