"""``hashkd demo``: images -> teacher -> BRCD student -> index -> REST service, end to end."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hashkd.cli._common import add_file_arguments, positive_int
from hashkd.demo_budget import BUDGET_MINUTES
from hashkd.settings import add_config_argument, positive_float, write_parser_settings

#: The demo's resolved settings, written into --workdir (``hashkd demo --config`` re-runs them).
SETTINGS_NAME = "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline end to end on the embedded digits (no download)",
        description="Train a ViT teacher, distil a MobileNetV3 student with BRCD (and one without KD), export it, "
        "encode the database with the teacher, index it, start the REST service, POST query images, print the "
        "hits and a results table, and stop. A short measured warm-up first estimates the time and "
        "chooses the epochs to fit --budget-minutes. Every stage keeps its artifact in --workdir and prints the command "
        "that reproduces it. A second run in the same --workdir reuses the artifacts, and the service's store "
        "when it holds exactly the teacher-coded database (else the store is rebuilt). The resolved "
        f"settings are written to WORKDIR/{SETTINGS_NAME} (--config re-runs them).",
    )
    add_config_argument(p)
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' (embedded, default), a class folder, or cifar10[:PATH]",
    )
    p.add_argument("--root", default=None, help="root of a list file's paths")
    p.add_argument("--bits", type=positive_int, default=64, help="code length (default 64)")
    p.add_argument(
        "--workdir", default=None, help="where the artifacts go (default: a new temporary folder)"
    )
    p.add_argument(
        "--teacher-epochs",
        type=positive_int,
        default=None,
        help="teacher epochs (default 30, fewer when --budget-minutes needs it)",
    )
    p.add_argument(
        "--student-epochs",
        type=positive_int,
        default=None,
        help="student epochs (default 20, fewer when --budget-minutes needs it)",
    )
    p.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=BUDGET_MINUTES,
        help="choose the epochs from a short measured warm-up so that the demo takes about this "
        f"long at most (default {BUDGET_MINUTES:g}; explicit --teacher-epochs/--student-epochs "
        "are kept)",
    )
    p.add_argument(
        "--max-train",
        type=positive_int,
        default=None,
        help="use at most this many training images (a small subset of a large folder)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a reduced run (2 epochs, 200 training images) for CI"
    )
    p.add_argument(
        "--keep-serving", action="store_true", help="keep the service running after the queries"
    )
    p.add_argument("--port", type=int, default=None, help="service port (default: a free one)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of splits, augmentation and initialisation (default 0)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="re-run every stage even when --workdir holds its artifact",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="show per-batch progress bars (default off)",
    )
    add_file_arguments(p)
    p.set_defaults(func=run, settings_parser=p)


def run(args: argparse.Namespace) -> int:
    from hashkd.demo import DemoConfig, run_demo

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="hashkd-demo-")
    workdir = args.workdir
    cfg = DemoConfig(
        workdir=workdir,
        data=args.data,
        root=args.root,
        bits=args.bits,
        quick=args.quick,
        keep_serving=args.keep_serving,
        port=args.port,
        seed=args.seed,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        budget_minutes=args.budget_minutes,
        max_train=args.max_train,
        progress=args.progress,
        fresh=args.fresh,
        cache=args.cache,
        cache_dir=args.cache_dir,
        strict=args.strict,
    )
    write_parser_settings(Path(workdir) / SETTINGS_NAME, args.settings_parser, args, "demo")
    run_demo(cfg)
    return 0
