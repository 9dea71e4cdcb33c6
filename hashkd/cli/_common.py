"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hashkd.settings import (  # noqa: F401  (re-exported for the commands and scripts)
    non_negative_int,
    parse_kwargs,
    parse_loss_options,
    positive_float,
    positive_int,
)

CACHE_CHOICES = ("auto", "memory", "disk", "off")


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
