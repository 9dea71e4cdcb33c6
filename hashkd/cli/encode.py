"""``hashkd encode``: images -> a code set (codes.npy, ids.npy, labels.npy, paths.json, meta.json)."""

from __future__ import annotations

import argparse

from hashkd.cli._common import add_file_arguments, data_options, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode images into a code set with a model artifact",
        description="Encode images with a model artifact into a code set directory: codes.npy (uint8, "
        "n x K/8, packed bits), ids.npy (int64), labels.npy (multi-hot, when the data has labels), "
        "paths.json (each image's file path relative to the data folder, when the images are files) "
        "and meta.json (model, bits, data, split, seed, path_root). Runs the fast runtime (ONNX Runtime when the "
        "artifact has a current ONNX export). With --shard I/N (or under torchrun: RANK of "
        "WORLD_SIZE) it encodes the I-th contiguous 1/N of the images into OUT/shard-I-of-N/, "
        "skips a shard already finished, and `hashkd codes merge OUT --out DIR` joins the shards.",
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
        "--batch-size", type=positive_int, default=256, help="images per batch (default 256)"
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="encode shard I of N (positions I*n//N .. (I+1)*n//N - 1) into OUT/shard-I-of-N; "
        "default under torchrun: RANK/WORLD_SIZE, else every image into OUT",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader processes decoding and resizing images (default 0: in this process)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "torchscript", "onnx"),
        help="runtime backend (default auto: onnx when exported, else torch)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="threads of the backend (default: all)"
    )
    add_file_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="output code set directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.encoding import Shard, encode_data, encode_shard
    from hashkd.runtime.config import read_artifact_config

    shard = Shard.parse(args.shard) if args.shard else Shard.from_env()
    common = dict(
        root=args.root,
        split=args.split,
        protocol=args.protocol,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        num_workers=args.workers,
        backend=args.backend,
        threads=args.threads,
    )
    try:
        img_size = int(read_artifact_config(args.model)[0].img_size)
    except (ValueError, OSError):  # encode_data reports a bad model with its own message
        img_size = None
    with data_options(args, img_size=img_size, progress=not args.no_progress):
        if shard is not None:
            folder, encoded = encode_shard(args.model, args.data, args.out, shard, **common)
            print(f"{'wrote' if encoded else 'kept the finished'} shard {shard} in {folder}")
            return 0
        codeset = encode_data(args.model, args.data, **common)
    codeset.save(args.out)
    print(f"wrote {len(codeset)} codes of {codeset.bits} bits to {args.out}")
    return 0
