"""``hashkd distill``: distil a frozen teacher artifact into a compact timm student.

The flags are generated from :class:`hashkd.training.config.DistillConfig`; ``--config
FILE.yaml`` reads them from a file and the run writes its resolved ``config.yaml`` into ``--out``.
"""

from __future__ import annotations

import argparse

from hashkd.cli._common import add_file_arguments, data_options
from hashkd.settings import add_arguments, add_config_argument, resolve
from hashkd.training.config import DistillConfig


class _LossHelpFormatter(argparse.HelpFormatter):
    """Lists the registered losses and their default weights under ``--loss``.

    The registry is read only when help is printed: importing it loads torch, which every
    other ``hashkd`` command would otherwise pay for at start-up.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "--loss" in action.option_strings:
            from hashkd.losses import describe_losses

            text += ". Registered (default weight): " + describe_losses().replace("%", "%%")
        return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        formatter_class=_LossHelpFormatter,
        help="distil a teacher into a compact student (BRCD and other KD losses)",
        description="Train a compact timm student to reproduce a frozen teacher's codes. The student keeps its "
        "own CIBHash term (unless --no-cib) plus the weighted KD losses of --loss (listed with their "
        "default weights under --loss; see docs/losses.md). Writes the student artifact, the "
        "training log and the resolved settings (config.yaml, which --config re-runs) into --out.",
    )
    add_config_argument(p)
    add_arguments(p, DistillConfig)
    add_file_arguments(p)
    p.set_defaults(func=run)


def _decode_size(cfg) -> int:
    """The image size the decode cache must serve: the larger of the teacher's and the student's."""
    from hashkd.models.artifact import read_config

    try:
        teacher_size = read_config(cfg.teacher)[0].img_size
    except (ValueError, OSError):  # distill() reports a bad teacher after checking the losses
        return cfg.img_size
    return max(teacher_size, cfg.img_size or teacher_size)


def run(args: argparse.Namespace) -> int:
    from hashkd.training.distill import distill

    cfg = resolve(DistillConfig, args)
    with data_options(args, img_size=_decode_size(cfg), progress=cfg.progress):
        out = distill(cfg)
    print(f"student artifact: {out}")
    return 0
