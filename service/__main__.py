"""``python -m service --model M --store S ...``: the same as ``hashkd serve`` (no entry point needed)."""

from __future__ import annotations

import argparse
import sys

from hashkd.cli import fail
from service.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(sub.choices["serve"], "serve")  # the old names, as `hashkd serve`
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] == ["serve"] else ["serve", *argv])
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
