"""The ``hashkd`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (called with the parsed namespace, returning an exit code).
Commands of the training side are listed in ``_BUILTIN``; the ``indexes`` and ``service``
packages add theirs through the ``hashkd.commands`` entry-point group, so that ``hashkd``
never imports them (the import rule of docs/ARCHITECTURE.md).

Flags follow one vocabulary across the commands (:mod:`hashkd.cli.vocabulary`, docs/cli.md);
the previous release's names still work as hidden aliases that print a warning.

Bad input is reported as one sentence on stderr with a non-zero exit code, no traceback:
every user-facing error in the project subclasses ``ValueError`` (or is an ``OSError``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

_BUILTIN = (
    "hashkd.cli.train_teacher",
    "hashkd.cli.distill",
    "hashkd.cli.pretrain",
    "hashkd.cli.encode",
    "hashkd.cli.codes",
    "hashkd.cli.evaluate",
    "hashkd.cli.export",
    "hashkd.cli.demo",
    "hashkd.cli.query",
    "hashkd.cli.add",
)

EXIT_USAGE = 2


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    out = []
    for name in _BUILTIN:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not written yet
                continue
            raise
        out.append(module.register)
    for ep in sorted(entry_points(group="hashkd.commands"), key=lambda e: e.name):
        try:
            out.append(ep.load())
        except ModuleNotFoundError as exc:  # e.g. `index` without FAISS: say what to install
            out.append(_unavailable(ep.name, exc.name or str(exc)))
    return out


#: what to install for a package a command needs (pyproject.toml's extras)
_INSTALL_HINTS = {
    "faiss": "pip install 'hashkd[cpu]' (or 'hashkd[gpu]' for CUDA FAISS)",
    "pymilvus": "pip install 'hashkd[milvus]'",
    "torch": "pip install 'hashkd[train]'",
}


def _unavailable(name: str, missing: str) -> Callable[[argparse._SubParsersAction], None]:
    """A stand-in for command ``name`` whose module needs the missing package ``missing``."""

    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser(name, help=f"(unavailable: {missing} is not installed)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

        def run(args: argparse.Namespace) -> int:
            hint = _INSTALL_HINTS.get(missing.split(".")[0], f"pip install {missing}")
            raise ValueError(f"hashkd {name} needs {missing!r}, which is not installed: {hint}")

        p.set_defaults(func=run)

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashkd",
        description="Unsupervised semantic hashing: train a ViT teacher, distill a compact student, "
        "index binary codes and serve image search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _registrars():
        register(sub)
    from hashkd.cli.vocabulary import add_deprecated_aliases, sub_commands

    for command, sub_parser in sub_commands(parser).items():
        add_deprecated_aliases(sub_parser, command)
    return parser


def fail(message: str) -> int:
    """Print ``message`` as the one-sentence error of the CLI and return the usage exit code."""
    message = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    if not message.endswith("."):
        message += "."
    print(f"hashkd: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        own = getattr(args, "settings_parser", None)
        if own is not None and getattr(args, "config", None):
            # a plain-argparse command (evaluate, demo): the file's settings become its flags
            from hashkd.settings import parse_with_config

            at = argv.index(args.command) + 1
            args = parse_with_config(parser, argv[at:], own, tuple(argv[:at]))
        code = args.func(args)
    except KeyboardInterrupt:
        print("hashkd: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError) as exc:
        if os.environ.get("HASHKD_DEBUG"):
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and getattr(exc, "filename", None):
            text = f"{exc.strerror or exc}: {exc.filename!r}"
        return fail(str(text))
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
