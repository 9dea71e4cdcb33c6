"""``hashkd train-teacher``: train a hashing teacher with CIBHash on unlabeled images.

The flags are generated from :class:`hashkd.training.config.TeacherConfig` (one definition of
each setting); ``--config FILE.yaml`` reads them from a file and the run writes its resolved
``config.yaml`` into ``--out``.
"""

from __future__ import annotations

import argparse

from hashkd.cli._common import add_file_arguments, data_options
from hashkd.settings import add_arguments, add_config_argument, resolve
from hashkd.training.config import TeacherConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher",
        help="train a ViT hashing teacher with CIBHash (no labels)",
        description="Train a hashing teacher with the unsupervised CIBHash objective. Labels are used only "
        "for the validation mAP. Runs under torchrun for several processes. Writes a model artifact "
        "(config.json + model.safetensors) of the best validation epoch, the training log and the "
        "resolved settings (config.yaml, which --config re-runs) into --out.",
    )
    add_config_argument(p)
    add_arguments(p, TeacherConfig)
    add_file_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.training.teacher import train_teacher

    cfg = resolve(TeacherConfig, args)
    with data_options(args, img_size=cfg.img_size, progress=cfg.progress):
        out = train_teacher(cfg)
    print(f"teacher artifact: {out}")
    return 0
