"""``hashkd distill``: distil a frozen teacher artifact into a compact timm student."""

from __future__ import annotations

import argparse

from hashkd.cli._common import (
    add_data_arguments,
    add_training_arguments,
    data_options,
    non_negative_int,
    parse_kwargs,
    parse_loss_options,
    positive_int,
)


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--weights {text!r} is not valid: expected comma-separated numbers, e.g. 1,0.5"
        ) from None


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
        "default weights under --loss; see docs/losses.md).",
    )
    p.add_argument(
        "--teacher",
        required=True,
        metavar="MODEL_DIR",
        help="teacher model artifact (hashkd train-teacher)",
    )
    p.add_argument(
        "--student",
        default="mobilenetv3_small_100",
        help="timm backbone of the student "
        "(default mobilenetv3_small_100; e.g. efficientnet_b0, resnet18)",
    )
    p.add_argument(
        "--student-kwargs", default=None, help="extra timm.create_model arguments (key=value,...)"
    )
    p.add_argument(
        "--loss",
        default="brcd",
        help="KD losses, comma-separated (default brcd); 'none' for CIBHash only",
    )
    p.add_argument(
        "--kd-inputs",
        choices=("codes", "logits"),  # hashkd.training.distill.KD_INPUTS (not imported: torch)
        default="codes",
        help="what the KD losses compare: both networks' ±1 codes (default) or their "
        "continuous pre-sign logits (the embeddings sp, rkd, crd... distil in their papers)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="one weight per loss, comma-separated (default: each loss's documented default "
        "weight, listed under --loss and written to the run's metadata)",
    )
    p.add_argument(
        "--loss-opt",
        action="append",
        metavar="LOSS.OPTION=VALUE",
        help="a loss option, repeatable: e.g. brcd.alpha=0.8, brcd.k=10, brcd.margin=0.3, "
        "brcd.mask_mode=own, brcd.use_bit_mask=false",
    )
    p.add_argument(
        "--no-cib", action="store_true", help="drop the student's own CIBHash term (KD losses only)"
    )
    p.add_argument(
        "--bits",
        type=positive_int,
        default=None,
        help="student code length (default: the teacher's)",
    )
    p.add_argument(
        "--img-size",
        type=positive_int,
        default=None,
        help="student input size (default: the teacher's)",
    )
    p.add_argument(
        "--head",
        choices=("linear", "mlp"),
        default="mlp",
        help="student hash head (default mlp, as BRCD)",
    )
    p.add_argument(
        "--pretrained", action="store_true", help="timm pretrained weights for the student backbone"
    )
    p.add_argument(
        "--backbone-weights", default=None, help="local weights file for the student backbone"
    )
    p.add_argument(
        "--student-weights",
        default=None,
        metavar="PATH.safetensors",
        help="start the student's backbone from `hashkd pretrain` weights; every tensor must match "
        "--student and --student-kwargs (unlike --backbone-weights, which loads what fits)",
    )
    p.add_argument("--freeze-backbone", action="store_true", help="train only the student's head")
    p.add_argument(
        "--view-bank",
        type=non_negative_int,
        default=0,
        metavar="E",
        help="augment each training image E times once and code the views with the teacher once "
        "(0 = augment online and run the teacher every step)",
    )
    add_data_arguments(p)
    p.add_argument(
        "--pool",
        default=None,
        metavar="SPEC",
        help="distil on an unlabeled pool instead of the training split: 'all', a group of --data "
        "('train': CIFAR-10's 50,000 training images), or an image source ('digits', "
        "'cifar10[:PATH]', a folder of images, a list file) with an optional '@GROUP'; the "
        "validation images and queries are always left out (docs/distill.md)",
    )
    add_training_arguments(p, lr=1e-3)
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate per step: constant, or cosine decay to 0 at the last step (default constant)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        metavar="N",
        help="linear warm-up over the first N epochs (fractions allowed; default 0)",
    )
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
    from hashkd.training.distill import DistillConfig, distill

    losses = (
        []
        if args.loss.strip().lower() == "none"
        else [s.strip() for s in args.loss.split(",") if s.strip()]
    )
    cfg = DistillConfig(
        out=args.out,
        teacher=args.teacher,
        student=args.student,
        student_kwargs=parse_kwargs(args.student_kwargs),
        losses=losses,
        weights=_weights(args.weights),
        loss_options=parse_loss_options(args.loss_opt),
        student_cib=not args.no_cib,
        kd_inputs=args.kd_inputs,
        bits=args.bits,
        img_size=args.img_size,
        head=args.head,
        pretrained=args.pretrained,
        backbone_weights=args.backbone_weights,
        student_weights=args.student_weights,
        freeze_backbone=args.freeze_backbone,
        data=args.data,
        pool=args.pool,
        root=args.root,
        protocol=args.protocol,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs,
        tau=args.tau,
        beta=args.beta,
        view_bank=args.view_bank,
        val_every=args.val_every,
        num_workers=args.num_workers,
        device=args.device,
        resume=args.resume,
        max_train=args.max_train,
        progress=not args.no_progress,
    )
    with data_options(args, img_size=_decode_size(cfg), progress=cfg.progress):
        out = distill(cfg)
    print(f"student artifact: {out}")
    return 0
