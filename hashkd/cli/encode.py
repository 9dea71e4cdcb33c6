"""``hashkd encode``: images -> a code set (codes.npy, ids.npy, labels.npy, paths.json, meta.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hashkd.cli._common import add_file_arguments, data_options
from hashkd.pipeline import EncodeConfig, encode_options
from hashkd.settings import CONFIG_NAME, add_arguments, add_config_argument, resolve, write_config


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
        "skips a shard already finished, and `hashkd codes merge OUT --out DIR` joins the shards. "
        "The resolved settings are written to OUT/config.yaml (--config re-runs them).",
    )
    add_config_argument(p)
    add_arguments(p, EncodeConfig)
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="encode shard I of N (positions I*n//N .. (I+1)*n//N - 1) into OUT/shard-I-of-N; "
        "default under torchrun: RANK/WORLD_SIZE, else every image into OUT",
    )
    add_file_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.encoding import Shard, encode_data, encode_shard
    from hashkd.runtime.config import read_artifact_config

    cfg = resolve(EncodeConfig, args)
    shard = Shard.parse(args.shard) if args.shard else Shard.from_env()
    common = encode_options(cfg)
    try:
        img_size = int(read_artifact_config(cfg.model)[0].img_size)
    except (ValueError, OSError):  # encode_data reports a bad model with its own message
        img_size = None
    with data_options(args, img_size=img_size, progress=cfg.progress):
        if shard is not None:
            folder, encoded = encode_shard(cfg.model, cfg.data, cfg.out, shard, **common)
            print(f"{'wrote' if encoded else 'kept the finished'} shard {shard} in {folder}")
            write_config(Path(cfg.out) / CONFIG_NAME, cfg, "encode")
            return 0
        codeset = encode_data(cfg.model, cfg.data, **common)
    codeset.save(cfg.out)
    write_config(Path(cfg.out) / CONFIG_NAME, cfg, "encode")
    print(f"wrote {len(codeset)} codes of {codeset.bits} bits to {cfg.out}")
    return 0
