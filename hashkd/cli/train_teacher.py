"""``hashkd train-teacher``: train a hashing teacher with CIBHash on unlabeled images."""

from __future__ import annotations

import argparse

from hashkd.cli._common import (
    add_data_arguments,
    add_model_arguments,
    add_training_arguments,
    data_options,
    non_negative_int,
    parse_kwargs,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher",
        help="train a ViT hashing teacher with CIBHash (no labels)",
        description="Train a hashing teacher with the unsupervised CIBHash objective. Labels are used only "
        "for the validation mAP. Runs under torchrun for several processes. Writes a model artifact "
        "(config.json + model.safetensors) of the best validation epoch into --out.",
    )
    add_data_arguments(p)
    add_model_arguments(p, default_backbone="vit_tiny_patch16_224", default_head="linear")
    add_training_arguments(p, lr=5e-4)
    p.add_argument(
        "--feature-cache",
        type=non_negative_int,
        default=0,
        metavar="E",
        help="with --freeze-backbone: augment each training image E times once, cache the backbone "
        "features and train the head on pairs of them (0 = off)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.training.teacher import TeacherConfig, train_teacher

    cfg = TeacherConfig(
        out=args.out,
        data=args.data,
        root=args.root,
        protocol=args.protocol,
        backbone=args.backbone,
        backbone_kwargs=parse_kwargs(args.backbone_kwargs),
        bits=args.bits,
        img_size=args.img_size,
        head=args.head,
        pretrained=args.pretrained,
        weights=args.weights,
        freeze_backbone=args.freeze_backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        tau=args.tau,
        beta=args.beta,
        seed=args.seed,
        val_every=args.val_every,
        feature_cache_views=args.feature_cache,
        num_workers=args.num_workers,
        device=args.device,
        resume=args.resume,
        max_train=args.max_train,
        progress=not args.no_progress,
    )
    with data_options(args, img_size=args.img_size, progress=not args.no_progress):
        out = train_teacher(cfg)
    print(f"teacher artifact: {out}")
    return 0
