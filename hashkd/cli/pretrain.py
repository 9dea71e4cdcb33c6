"""``hashkd pretrain``: self-supervised pretraining of a timm backbone on unlabeled images."""

from __future__ import annotations

import argparse

from hashkd.cli._common import (
    add_file_arguments,
    data_options,
    non_negative_int,
    parse_kwargs,
    positive_int,
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    from hashkd.training import PRETRAIN_METHODS as METHODS

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone on unlabeled images (SimCLR or MoCo v3)",
        description="Pretrain a timm backbone without labels with SimCLR (Chen et al., ICML 2020) or MoCo v3 "
        "(Chen, Xie, He, ICCV 2021). Writes OUT (.safetensors, the backbone's state dict), OUT.json (its "
        "description, read by `hashkd train-teacher --weights OUT`), OUT.ckpt.pt (resume) and OUT.log.jsonl. "
        "Runs under torchrun for several processes.",
    )
    p.add_argument(
        "--data",
        default="digits",
        help="images: a class folder, a list file, 'digits' or "
        "'cifar10[:PATH]' (labels are ignored; default digits)",
    )
    p.add_argument("--root", default=None, help="root folder of list-file paths")
    add_file_arguments(p)
    p.add_argument(
        "--group",
        default=None,
        help="named part of the data to use (default: 'train' when the "
        "data has one, e.g. CIFAR-10's 50,000 training images; else every image)",
    )
    p.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        help="a seeded random subset of this many images",
    )
    p.add_argument(
        "--backbone",
        default="vit_tiny_patch16_224",
        help="timm model name (default vit_tiny_patch16_224)",
    )
    p.add_argument(
        "--backbone-kwargs",
        default=None,
        help="extra timm.create_model arguments, key=value,... or "
        "JSON (a ViT below 64 px gets patch_size=4 unless given)",
    )
    p.add_argument(
        "--img-size", type=positive_int, default=32, help="input size in pixels (default 32)"
    )
    p.add_argument(
        "--method", choices=METHODS, default="simclr", help="SSL method (default simclr)"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=100, help="epochs over the images (default 100)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="images per batch and process (default 256)",
    )
    p.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="peak AdamW learning rate (default 1e-3)"
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)"
    )
    p.add_argument(
        "--warmup-epochs", type=float, default=1.0, help="linear warm-up epochs (default 1)"
    )
    p.add_argument(
        "--tau", type=_positive_float, default=0.2, help="contrastive temperature (default 0.2)"
    )
    p.add_argument(
        "--proj-dim", type=positive_int, default=128, help="projection output size (default 128)"
    )
    p.add_argument(
        "--proj-hidden", type=positive_int, default=512, help="projection hidden size (default 512)"
    )
    p.add_argument(
        "--momentum", type=float, default=0.99, help="MoCo v3 initial EMA momentum (default 0.99)"
    )
    p.add_argument(
        "--knn-eval",
        action="store_true",
        help="after the last epoch (and every --knn-every epochs), "
        "kNN accuracy of the features: the protocol's labeled train split votes for its queries",
    )
    p.add_argument(
        "--knn-every",
        type=non_negative_int,
        default=0,
        help="kNN accuracy every N epochs (0: only at the end)",
    )
    p.add_argument(
        "--knn-k",
        type=positive_int,
        default=20,
        help="neighbours of the kNN classifier (default 20)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        help="split protocol (default: the data's own): its validation images and queries, "
        "drawn with --seed, are never trained on; also the splits of --knn-eval",
    )
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        help="also checkpoint (and write the weights) every N steps inside an epoch (default 0: per epoch)",
    )
    p.add_argument(
        "--keep-every",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also keep the weights of every N-th epoch as OUT-epochNNN.safetensors (+ .json), e.g. "
        "to plot hashing mAP against pretraining time (default 0: only the latest)",
    )
    p.add_argument(
        "--time-limit",
        type=_positive_float,
        default=None,
        metavar="MIN",
        help="stop after MIN minutes, writing the weights and a checkpoint that --resume continues",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, data order and augmentation"
    )
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes (default 0)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.pt")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", required=True, help="weights file to write, ending in .safetensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.training.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        out=args.out,
        data=args.data,
        root=args.root,
        group=args.group,
        backbone=args.backbone,
        backbone_kwargs=parse_kwargs(args.backbone_kwargs),
        img_size=args.img_size,
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        tau=args.tau,
        proj_dim=args.proj_dim,
        proj_hidden=args.proj_hidden,
        momentum=args.momentum,
        max_images=args.max_images,
        seed=args.seed,
        knn_eval=args.knn_eval,
        knn_every=args.knn_every,
        knn_k=args.knn_k,
        protocol=args.protocol,
        checkpoint_every=args.checkpoint_every,
        keep_every=args.keep_every,
        time_limit_min=args.time_limit,
        num_workers=args.num_workers,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    with data_options(args, img_size=cfg.img_size, progress=cfg.progress):
        out = pretrain(cfg)
    print(f"pretrained backbone: {out} (description {out}.json)")
    return 0
