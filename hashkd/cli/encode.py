"""``hashkd encode``: images -> a code set (codes.npy, ids.npy, labels.npy, meta.json)."""

from __future__ import annotations

import argparse

from hashkd.cli._common import add_file_arguments, data_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode images into a code set with a model artifact",
        description="Encode images with a model artifact into a code set directory: codes.npy (uint8, "
        "n x K/8, packed bits), ids.npy (int64), labels.npy (multi-hot, when the data has labels) and "
        "meta.json (model, bits, data, split, seed).",
    )
    p.add_argument(
        "model",
        metavar="MODEL_DIR",
        help="model artifact directory (config.json + model.safetensors)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a class folder, a DeepHash list file (with --root), 'digits' or 'cifar10[:PATH]'",
    )
    p.add_argument("--root", default=None, help="root folder of a list file's relative paths")
    p.add_argument(
        "--split",
        default="all",
        choices=("all", "train", "val", "query", "database"),
        help="encode one split of the data's protocol instead of every image (default all)",
    )
    p.add_argument(
        "--protocol", default=None, help="split protocol for --split (see train-teacher --help)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split protocol (default 0)")
    p.add_argument(
        "--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)"
    )
    add_file_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="output code set directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.encoding import encode_data
    from hashkd.models.artifact import read_config

    config, _ = read_config(args.model)
    with data_options(args, img_size=int(config.img_size), progress=not args.no_progress):
        codeset = encode_data(
            args.model,
            args.data,
            root=args.root,
            split=args.split,
            protocol=args.protocol,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    codeset.save(args.out)
    print(f"wrote {len(codeset)} codes of {codeset.bits} bits to {args.out}")
    return 0
