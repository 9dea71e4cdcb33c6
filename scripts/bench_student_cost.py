#!/usr/bin/env python
"""What a student costs beside its teacher: parameters, FLOPs and measured images/s, one run.

Each model is built from its architecture (random init: speed does not depend on the weights)
or read from a model artifact, at its own input size. Measured side by side, interleaved in
``--rounds`` rounds so that a change of machine load hits every model alike: encode throughput
(eval mode, no autograd, batch ``--batch``) and training throughput (forward + backward + Adam
step on the codes' straight-through output, batch ``--batch``). Prints a table with each
model's ratio to the first one (the teacher) and writes it as JSON with ``--json-out``.

    python scripts/bench_student_cost.py --threads 1 \
        --model teacher=vitc_tiny:linear:patch_size=8 \
        --model default=mobilenetv3_small_100:mlp --model compact=mobilenetv3_small_050:mlp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from hashkd.cli._common import parse_kwargs  # noqa: E402
from hashkd.models import build_model, load_artifact, model_cost  # noqa: E402
from hashkd.models.complexity import images_per_second  # noqa: E402
from hashkd.models.hash_model import HashModel, ModelConfig  # noqa: E402


def parse_model(text: str, bits: int, img_size: int) -> tuple[str, HashModel]:
    """``NAME=BACKBONE:HEAD[:k=v,...]`` (random init) or ``NAME=DIR`` (a model artifact)."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(
            f"--model {text!r} is not valid: expected NAME=BACKBONE:HEAD[:key=value,...] or NAME=DIR"
        )
    if Path(spec).is_dir():
        return name, load_artifact(spec)
    backbone, _, rest = spec.partition(":")
    head, _, kwargs = rest.partition(":")
    config = ModelConfig(
        backbone=backbone,
        bits=bits,
        img_size=img_size,
        head=head or "mlp",
        backbone_kwargs=parse_kwargs(kwargs) if kwargs else {},
    )
    return name, build_model(config)


def encode_step(model: HashModel, x: torch.Tensor):
    def step() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return step


def train_step(model: HashModel, x: torch.Tensor):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", action="append", required=True, metavar="NAME=SPEC")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out", dest="json", default=None)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(ap, "scripts/bench_student_cost.py")
    args = ap.parse_args(argv)
    if min(args.batch, args.threads, args.rounds) < 1 or args.seconds <= 0:
        ap.error("--batch, --threads, --rounds and --seconds must be positive")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    try:
        models = [parse_model(t, args.bits, args.img_size) for t in args.model]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        ap.error(str(exc))
    rows: dict[str, dict] = {}
    for name, model in models:
        size = int(model.config.img_size)
        x = torch.randn(args.batch, 3, size, size)
        rows[name] = {
            **model_cost(model),
            "backbone": model.config.backbone,
            "head": model.config.head,
            "encode": [],
            "train": [],
            "_steps": (encode_step(model, x), train_step(model, x)),
        }
    for _ in range(args.rounds):
        for row in rows.values():
            enc, tr = row["_steps"]
            row["encode"].append(images_per_second(enc, args.batch, args.seconds))
            row["train"].append(images_per_second(tr, args.batch, args.seconds))
    first = next(iter(rows.values()))
    out = []
    for name, row in rows.items():
        row.pop("_steps")
        enc = sorted(row["encode"])[len(row["encode"]) // 2]
        tr = sorted(row["train"])[len(row["train"]) // 2]
        out.append(
            {
                "name": name,
                **row,
                "encode_img_s": round(enc, 1),
                "train_img_s": round(tr, 1),
                "flops_ratio": first["flops"] / row["flops"],
                "encode_speedup": enc / sorted(first["encode"])[len(first["encode"]) // 2],
                "train_speedup": tr / sorted(first["train"])[len(first["train"]) // 2],
            }
        )
    print(
        f"batch {args.batch}, {args.threads} thread(s), {args.img_size} px, {args.bits} bits; "
        f"median of {args.rounds} rounds of {args.seconds:g} s"
    )
    print(
        "| model | backbone | head | params | MFLOPs | FLOPs ratio | encode img/s | x | "
        "train img/s | x |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in out:
        print(
            f"| {r['name']} | {r['backbone']} | {r['head']} | {r['params'] / 1e6:.2f} M "
            f"| {r['flops'] / 1e6:.2f} | {r['flops_ratio']:.1f}x | {r['encode_img_s']:.0f} "
            f"| {r['encode_speedup']:.2f} | {r['train_img_s']:.0f} | {r['train_speedup']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
