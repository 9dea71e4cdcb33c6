"""``hashkd query``: search a running server (``hashkd serve``) with image files."""

from __future__ import annotations

import argparse
import os

from hashkd.cli._common import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="search a running hashkd server with images and print the hits",
        description="POST each image to a hashkd server's /v1/search and print the nearest items "
        "(rank, id, Hamming distance, metadata), or JSON with --print-json.",
    )
    p.add_argument("url", metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="query image files")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--k", type=positive_int, default=None, help="nearest items per image (server default 10)"
    )
    group.add_argument(
        "--radius", type=non_negative_int, default=None, help="every item within this many bits"
    )
    p.add_argument(
        "--offset", type=non_negative_int, default=0, help="skip this many nearest items (pages)"
    )
    p.add_argument(
        "--filter",
        default=None,
        metavar="JSON",
        help='only items whose metadata matches, e.g. \'{"label": ["cat", "dog"]}\'',
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        metavar="NAME",
        help="environment variable holding the server's API key (reads need none)",
    )
    p.add_argument(
        "--print-json", action="store_true", help="print the results as JSON instead of text"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hashkd.client import parse_filter_text, query_images, results_json, results_text

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    results = query_images(
        args.url,
        args.images,
        k=args.k,
        radius=args.radius,
        filter=parse_filter_text(args.filter),
        offset=args.offset,
        api_key=api_key,
    )
    print(results_json(results) if args.print_json else results_text(results))
    return 0
