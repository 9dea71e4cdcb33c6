"""``hashkd add``: add a folder (or files) of images to a running server, resumably."""

from __future__ import annotations

import argparse
import os
import sys

from hashkd.cli._common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add",
        help="add the images of folders or files to a running hashkd server (resumable)",
        description="Upload every image of the folders (recursively) and files to a hashkd "
        "server's /v1/items in batches, with metadata {'path': ...}: the file's path relative to "
        "the folder given (as `hashkd encode` records it), or as given for a file. Files whose "
        "path is already stored are skipped, so an interrupted run is resumed by running it "
        "again; a 503 is retried after the server's Retry-After.",
    )
    p.add_argument("url", metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("sources", metavar="FOLDER_OR_FILE", nargs="+", help="image folders or files")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="images per request (default 32; at most the server's max_images)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=8,
        help="retries of a batch answered 503 or cut off (default 8)",
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        metavar="NAME",
        help="environment variable holding the server's API key (writes need it when set)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the progress bar (default on; --no-progress hides it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.client import Client

    if args.retries < 0:
        raise ValueError(f"--retries {args.retries} is not valid: expected an integer >= 0")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    with Client(args.url, api_key=api_key) as client:
        report = client.add_folder(
            args.sources,
            batch_size=args.batch_size,
            progress=args.progress,
            retries=args.retries,
        )
    for path, why in report.failed.items():
        print(f"hashkd: warning: skipped {path}: {why}", file=sys.stderr)
    print(report.summary())
    return 0
