"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CACHE_CHOICES = ("auto", "memory", "disk", "off")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``"depth=6,patch_size=4,drop_rate=0.1"`` -> ``{"depth": 6, "patch_size": 4, "drop_rate": 0.1}``."""
    if not text:
        return {}
    if text.strip().startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--backbone-kwargs {text!r} is not valid JSON: {exc}") from None
        if not isinstance(out, dict):
            raise ValueError(
                f"--backbone-kwargs {text!r} is not valid: expected a JSON object or key=value pairs"
            )
        return out
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--backbone-kwargs item {part!r} is not valid: expected key=value")
        key, value = part.split("=", 1)
        out[key.strip()] = _scalar(value.strip())
    return out


def parse_loss_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["brcd.margin=0.3", "brcd.mask_mode=own"]`` -> ``{"brcd": {"margin": 0.3, "mask_mode": "own"}}``
    (the ``--loss-opt`` flags of ``hashkd distill`` and ``scripts/bench_distill.py``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(
                f"--loss-opt {item!r} is not valid: expected LOSS.OPTION=VALUE, e.g. brcd.alpha=0.8"
            )
        key, value = item.split("=", 1)
        loss, option = key.split(".", 1)
        out.setdefault(loss, {}).update(parse_kwargs(f"{option}={value}"))
    return out


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="digits",
        help="images: a folder with one sub-folder per class, a DeepHash list file "
        "('path.jpg 0 1 0 ...'; see --root), 'digits' (embedded scikit-learn digits, no download) "
        "or 'cifar10[:PATH]' (default: digits)",
    )
    p.add_argument(
        "--root",
        default=None,
        help="root folder the paths of a list file are relative to "
        "(default: the list file's folder)",
    )
    p.add_argument(
        "--protocol",
        default=None,
        help="named split protocol: digits, cifar10 (50k database), cifar10-cpu (10k database); "
        "default: digits / cifar10-cpu for those data sets, else 50%% train, 10%% val, 10%% query per class",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice: splits, augmentation, init (default 0)",
    )
    add_file_arguments(p)


def add_file_arguments(p: argparse.ArgumentParser) -> None:
    """``--cache``, ``--cache-dir`` and ``--strict``: how image files are decoded (docs/data.md)."""
    p.add_argument(
        "--cache",
        choices=CACHE_CHOICES,
        default="auto",
        help="keep each image decoded once, resized to a shorter side of ceil(1.15 x img-size): "
        "in memory, on disk (--cache-dir), auto (memory up to 1 GiB of pixels, else disk) or "
        "off (decode on every access) (default auto)",
    )
    p.add_argument(
        "--cache-dir",
        default=".hashkd-cache",
        help="folder of the on-disk image cache (default .hashkd-cache in the working directory)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image file or empty class folder "
        "(default: skip it with a warning)",
    )


@contextmanager
def data_options(
    args: argparse.Namespace, img_size: int | None = None, progress: bool = True
) -> Iterator[None]:
    """Run the block with the image-file options of ``args``; then print the skipped count."""
    from hashkd.data import use_data_options

    with use_data_options(
        cache=getattr(args, "cache", "auto"),
        cache_dir=getattr(args, "cache_dir", ".hashkd-cache"),
        strict=bool(getattr(args, "strict", False)),
        img_size=img_size,
        progress=progress,
    ) as report:
        yield
    summary = report.summary()
    if summary:
        print(summary, file=sys.stderr)


def add_model_arguments(
    p: argparse.ArgumentParser, default_backbone: str, default_head: str
) -> None:
    p.add_argument(
        "--backbone", default=default_backbone, help=f"timm model name (default {default_backbone})"
    )
    p.add_argument(
        "--backbone-kwargs",
        default=None,
        help="extra timm.create_model arguments as key=value,... or JSON, e.g. 'patch_size=4,depth=6'",
    )
    p.add_argument(
        "--bits", type=positive_int, default=64, help="code length K, a multiple of 8 (default 64)"
    )
    p.add_argument(
        "--img-size", type=positive_int, default=32, help="input image size in pixels (default 32)"
    )
    p.add_argument(
        "--head",
        choices=("linear", "mlp"),
        default=default_head,
        help=f"hash head (default {default_head})",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="ask timm for its pretrained weights (needs internet or a cache)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="local backbone weights: .safetensors, or a timm/PyTorch checkpoint "
        "(read with weights_only=True)",
    )
    p.add_argument(
        "--freeze-backbone", action="store_true", help="train only the hash head (a linear probe)"
    )


def add_training_arguments(p: argparse.ArgumentParser, lr: float) -> None:
    p.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default 10)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="images per batch and process (default 64)",
    )
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr})")
    p.add_argument("--tau", type=float, default=0.3, help="contrastive temperature (default 0.3)")
    p.add_argument(
        "--beta",
        type=float,
        default=0.001,
        help="weight of CIBHash's Bernoulli KL term (default 0.001)",
    )
    p.add_argument(
        "--val-every", type=positive_int, default=1, help="validate every N epochs (default 1)"
    )
    p.add_argument(
        "--max-train",
        type=positive_int,
        default=None,
        help="use at most this many training images (class-balanced; for quick runs)",
    )
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes (default 0)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto, cpu or cuda[:N] (default auto: a GPU when there is one)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--out",
        required=True,
        help="output directory: the model artifact, checkpoint and training log",
    )
