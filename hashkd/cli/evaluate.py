"""``hashkd evaluate`` (and ``scripts/evaluate_map.py``): mAP@K and friends of binary codes.

This module only parses the options; the evaluation is :func:`hashkd.evaluation.evaluate`.

Two inputs:

* two code sets: ``--query DIR --database DIR`` (``codes.npy`` + ``labels.npy`` each);
* models and images: ``--query-model M1 [--database-model M2]`` with either
  ``--data SPEC`` (the ``query`` and ``database`` splits of a named protocol, ``--seed``) or
  ``--query-data SPEC --database-data SPEC`` (every image of each).

The retrieval protocol is *symmetric* when one model made both sides, *asymmetric* when the
database was encoded by another model (e.g. teacher database, student queries); for code
sets it is read from their ``meta.json`` (model digest or directory) unless
``--retrieval-protocol`` says otherwise. Output: a Markdown table on stdout, and optionally ``--json-out``,
``--markdown`` and ``--plots`` (PR curve and P@N / R@N curves as PNG).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hashkd.cli._common import add_file_arguments
from hashkd.cli.vocabulary import add_deprecated_aliases
from hashkd.evaluation import (
    PROTOCOLS,
    EvaluationInputs,
    collapse_warnings,
    evaluate,
    markdown_table,
    skipped_summary,
    write_report,
)
from hashkd.settings import add_config_argument, parse_with_config

DESCRIPTION = """\
Evaluate Hamming ranking of binary codes: mAP@K (the headline tie-averaged value, i.e. the
expected mAP under a random order of equal distances, beside the value with ties broken by
database position), precision within a Hamming radius, precision@N / recall@N, the
precision-recall curve over the Hamming radius, and the code health of both sides (distinct
codes, bit balance, largest bucket; a warning on stderr when codes are collapsed).
Relevant = sharing at least one label.

Inputs, one of:
  --query DIR --database DIR          two code sets (codes.npy and labels.npy each)
  --query-model M1 [--database-model M2] --data SPEC
                                      encode the query and database splits of a protocol
  --query-model M1 [--database-model M2] --query-data SPEC --database-data SPEC
                                      encode every image of each source

The protocol is symmetric when one model made both sides and asymmetric when the database
was encoded by another model (e.g. teacher database, student queries); for code sets it is
read from meta.json (model digest or directory) unless --retrieval-protocol overrides it.
Prints a Markdown table; --json-out, --markdown and --plots write files. --config FILE.yaml
reads the options from a file (keys: the flag names without dashes; flags given beside it win).
"""


# ----------------------------------------------------------------------------- arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    codes = p.add_argument_group("code sets (from `hashkd encode`)")
    codes.add_argument(
        "--query", metavar="DIR", help="query code set directory (codes.npy, labels.npy, meta.json)"
    )
    codes.add_argument(
        "--database",
        metavar="DIR",
        help="database code set directory (codes.npy, labels.npy, meta.json)",
    )

    models = p.add_argument_group("models and images (encode, then evaluate)")
    models.add_argument(
        "--query-model", metavar="DIR", help="model artifact that encodes the queries"
    )
    models.add_argument(
        "--database-model",
        metavar="DIR",
        help="model artifact that encodes the database (default: --query-model, i.e. symmetric; "
        "a different model gives the asymmetric protocol, e.g. the teacher here and the student "
        "as --query-model)",
    )
    models.add_argument(
        "--data",
        metavar="SPEC",
        help="one image source split into query and database by --split-protocol: 'digits', "
        "'cifar10[:PATH]', a class folder or a DeepHash list file",
    )
    models.add_argument(
        "--split-protocol",
        metavar="NAME",
        default=None,
        help="named split protocol for --data: digits, cifar10 (50k database), cifar10-cpu "
        "(10k database); default: the data set's own, or for a folder the training default "
        "(50%% train, 10%% val, 10%% query per class; database = rest + train)",
    )
    models.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split protocol, and of the database order with --database-data (default 0)",
    )
    models.add_argument(
        "--query-data", metavar="SPEC", help="every image of SPEC is a query (instead of --data)"
    )
    models.add_argument(
        "--database-data",
        metavar="SPEC",
        help="every image of SPEC is in the database (instead of --data)",
    )
    models.add_argument(
        "--root", default=None, help="root folder of list-file paths (for list-file specs)"
    )
    models.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass (default 256)"
    )
    models.add_argument(
        "--save-codes",
        metavar="DIR",
        default=None,
        help="also write the encoded code sets to DIR/query and DIR/database",
    )
    models.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress bars (default on)",
    )
    add_file_arguments(models)

    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--k",
        dest="topk",
        type=int,
        default=1000,
        help="K of mAP@K (default 1000: CIFAR-10 convention; 5000 for NUS-WIDE / MS-COCO); "
        "clipped to the database size",
    )
    ev.add_argument(
        "--radius",
        type=int,
        default=2,
        help="Hamming radius of the lookup precision P@r<=R (inclusive, default 2)",
    )
    ev.add_argument(
        "--pn",
        metavar="N,N,...",
        default=None,
        help="points N of the precision@N / recall@N curve (default 1,10,50,100,200,...,1000; points beyond the database are clipped to its size)",
    )
    ev.add_argument(
        "--retrieval-protocol",
        dest="protocol",
        choices=PROTOCOLS,
        default=None,
        help="override the retrieval protocol recorded in the output (default: asymmetric when the "
        "two sides were encoded by different models, else symmetric)",
    )
    ev.add_argument(
        "--no-tie-average",
        action="store_true",
        help="skip the tie-averaged mAP (expected mAP under random order of equal distances)",
    )
    ev.add_argument(
        "--json-out",
        metavar="FILE",
        default=None,
        help="write every figure and curve as JSON to FILE",
    )
    ev.add_argument(
        "--markdown", metavar="FILE", default=None, help="also write the Markdown table to FILE"
    )
    ev.add_argument(
        "--plots",
        metavar="DIR",
        default=None,
        help="write pr_curve.png (precision-recall over Hamming radius) and precision_at_n.png "
        "(P@N and R@N) into DIR",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="mAP@K, precision within a Hamming radius and PR / P@N curves of binary codes",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(p)
    add_arguments(p)
    p.set_defaults(func=run, settings_parser=p)


# ----------------------------------------------------------------------------- run


def _parse_points(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        pts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--pn {text!r} is not valid: expected comma-separated positive integers"
        ) from None
    if not pts or min(pts) < 1:
        raise ValueError(f"--pn {text!r} is not valid: expected comma-separated positive integers")
    return pts


def inputs_from_args(args: argparse.Namespace) -> EvaluationInputs:
    """The :class:`hashkd.evaluation.EvaluationInputs` that the parsed options describe."""
    return EvaluationInputs(
        query=args.query,
        database=args.database,
        query_model=args.query_model,
        database_model=args.database_model,
        data=args.data,
        split_protocol=args.split_protocol,
        seed=args.seed,
        query_data=args.query_data,
        database_data=args.database_data,
        root=args.root,
        batch_size=args.batch_size,
        cache=args.cache,
        cache_dir=args.cache_dir,
        strict=args.strict,
        save_codes=args.save_codes,
        progress=args.progress,
        topk=args.topk,
        radius=args.radius,
        pn_points=_parse_points(args.pn),
        protocol=args.protocol,
        tie_averaged=not args.no_tie_average,
    )


def run(args: argparse.Namespace) -> int:
    result = evaluate(inputs_from_args(args))
    for line in collapse_warnings(result):
        print(line, file=sys.stderr)
    skipped = skipped_summary(result)
    if skipped:
        print(skipped, file=sys.stderr)
    sys.stdout.write(markdown_table([result]))
    for path in write_report(result, args.json_out, args.markdown, args.plots):
        if path.suffix == ".png":
            print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``scripts/evaluate_map.py``): same options, same errors as ``hashkd evaluate``."""
    from hashkd.cli import fail

    parser = argparse.ArgumentParser(
        prog="evaluate_map.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(parser)
    add_arguments(parser)
    add_deprecated_aliases(parser, "evaluate")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser.parse_args(argv)  # usage errors and --help before anything is read
    try:
        return run(parse_with_config(parser, argv))
    except (ValueError, OSError, KeyError) as exc:
        if os.environ.get("HASHKD_DEBUG"):
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return fail(str(text))
