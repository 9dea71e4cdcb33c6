"""``hashkd codes merge``: join the shards of ``hashkd encode --shard I/N`` into one code set."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "codes",
        help="work with code sets (merge the shards of a sharded encode)",
        description="Code set tools.",
    )
    tools = p.add_subparsers(dest="codes_command", metavar="TOOL")
    tools.required = True
    m = tools.add_parser(
        "merge",
        help="merge the shards of `hashkd encode --shard I/N` into one code set",
        description="Merge finished shards (OUT/shard-I-of-N folders, or OUT itself) into one code "
        "set in the images' order. The shards must come from one encode run: same model digest, "
        "bits, data, split, protocol, seed and shard count; each shard once, none missing.",
    )
    m.add_argument(
        "parts", nargs="+", metavar="PART", help="a shard folder, or a folder of shard-I-of-N ones"
    )
    m.add_argument("--out", required=True, help="output code set directory")
    m.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from hashkd.codes import merge_shards

    codeset = merge_shards(args.parts)
    codeset.save(args.out)
    print(f"wrote {len(codeset)} codes of {codeset.bits} bits to {args.out}")
    return 0
