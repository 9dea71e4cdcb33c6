"""``hashkd pretrain``: self-supervised pretraining of a timm backbone on unlabeled images.

The flags are generated from :class:`hashkd.training.config.PretrainConfig`; ``--config
FILE.yaml`` reads them from a file and the run writes its resolved ``config.yaml`` into ``--out``.
"""

from __future__ import annotations

import argparse

from hashkd.cli._common import add_file_arguments, data_options
from hashkd.cli.vocabulary import warn_deprecated
from hashkd.settings import add_arguments, add_config_argument, resolve
from hashkd.training.config import PretrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone on unlabeled images (SimCLR or MoCo v3)",
        description="Pretrain a timm backbone without labels with SimCLR (Chen et al., ICML 2020) or MoCo v3 "
        "(Chen, Xie, He, ICCV 2021). Writes into the folder --out: backbone.safetensors (the "
        "backbone's state dict; `hashkd train-teacher --backbone-weights OUT` reads it), "
        "backbone.safetensors.json (its description), checkpoint.pt (resume), train_log.jsonl and "
        "config.yaml (the resolved settings, which --config re-runs). Runs under torchrun for "
        "several processes.",
    )
    add_config_argument(p)
    add_arguments(p, PretrainConfig)
    add_file_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.training.pretrain import pretrain, side_paths

    cfg = resolve(PretrainConfig, args)
    if str(cfg.out).endswith(".safetensors"):
        warn_deprecated(
            f"--out {cfg.out} (a weights file)", "--out FOLDER (backbone.safetensors inside it)"
        )
    with data_options(args, img_size=cfg.img_size, progress=cfg.progress):
        out = pretrain(cfg)
    print(f"pretrained backbone: {out} (description {side_paths(cfg.out)['json']})")
    return 0
