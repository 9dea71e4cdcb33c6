"""``hashkd evaluate`` (and ``scripts/evaluate_map.py``): mAP@K and friends of binary codes.

Two inputs:

* two code sets: ``--query DIR --database DIR`` (``codes.npy`` + ``labels.npy`` each);
* models and images: ``--query-model M1 [--database-model M2]`` with either
  ``--data SPEC`` (the ``query`` and ``database`` splits of a named protocol, ``--seed``) or
  ``--query-data SPEC --database-data SPEC`` (every image of each).

The retrieval protocol is *symmetric* when one model made both sides, *asymmetric* when the
database was encoded by another model (e.g. teacher database, student queries); for code
sets it is read from their ``meta.json`` (model digest or directory) unless ``--protocol``
says otherwise. Output: a Markdown table on stdout, and optionally ``--json``,
``--markdown`` and ``--plots`` (PR curve and P@N / R@N curves as PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROTOCOLS = ("symmetric", "asymmetric")
DESCRIPTION = """\
Evaluate Hamming ranking of binary codes: mAP@K (ties broken by database position, plus the
tie-averaged value), precision within a Hamming radius, precision@N / recall@N and the
precision-recall curve over the Hamming radius. Relevant = sharing at least one label.

Inputs, one of:
  --query DIR --database DIR          two code sets (codes.npy and labels.npy each)
  --query-model M1 [--database-model M2] --data SPEC
                                      encode the query and database splits of a protocol
  --query-model M1 [--database-model M2] --query-data SPEC --database-data SPEC
                                      encode every image of each source

The protocol is symmetric when one model made both sides and asymmetric when the database
was encoded by another model (e.g. teacher database, student queries); for code sets it is
read from meta.json (model digest or directory) unless --protocol overrides it. Prints a
Markdown table; --json, --markdown and --plots write files.
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
        "--seed", type=int, default=0, help="seed of the split protocol (default 0, as in training)"
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
    models.add_argument("--no-progress", action="store_true", help="hide progress bars")

    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--topk",
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
        "--protocol",
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
        "--json", metavar="FILE", default=None, help="write every figure and curve as JSON to FILE"
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
    add_arguments(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- protocol and inputs


def _model_identity(meta: dict[str, Any]) -> str | None:
    return meta.get("model_digest") or meta.get("model") or None


def retrieval_protocol(
    query_meta: dict[str, Any], database_meta: dict[str, Any]
) -> tuple[str, str]:
    """``(protocol, how)``: asymmetric iff both metas name a model and the models differ.

    The model is identified by ``model_digest`` (weights) when both sides have one, else by the
    ``model`` directory. ``how`` is ``"meta"`` when both sides named a model, else ``"assumed"``.
    """
    q, d = query_meta.get("model_digest"), database_meta.get("model_digest")
    if not (q and d):
        q, d = query_meta.get("model"), database_meta.get("model")
    if q and d:
        return ("symmetric" if q == d else "asymmetric"), "meta"
    return "symmetric", "assumed"


def _load_code_set(path: str, role: str):
    from hashkd.codes import CodeSet

    if not Path(path).is_dir():
        raise ValueError(
            f"{role} code set directory {path!r} does not exist: expected a folder with codes.npy and labels.npy"
        )
    cs = CodeSet.load(path)
    if cs.labels is None:
        raise ValueError(
            f"{role} code set {path!r} has no labels.npy: expected multi-hot labels to judge relevance"
        )
    return cs


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


def _check_args(args: argparse.Namespace) -> str:
    """Validate the combination of options; return the input mode ('codes' or 'models')."""
    if args.topk <= 0:
        raise ValueError(f"--topk {args.topk} is not valid: expected a positive integer")
    if args.radius < 0:
        raise ValueError(f"--radius {args.radius} is not valid: expected an integer >= 0")
    if args.batch_size <= 0:
        raise ValueError(
            f"--batch-size {args.batch_size} is not valid: expected a positive integer"
        )
    code_mode = args.query is not None or args.database is not None
    model_opts = [
        args.query_model,
        args.database_model,
        args.data,
        args.query_data,
        args.database_data,
    ]
    model_mode = any(x is not None for x in model_opts)
    if code_mode and model_mode:
        raise ValueError(
            "code sets (--query/--database) and models (--query-model ...) were both given: expected one kind of input"
        )
    if code_mode:
        if args.query is None or args.database is None:
            missing = "--database" if args.query is not None else "--query"
            raise ValueError(f"{missing} is missing: expected both --query DIR and --database DIR")
        return "codes"
    if not model_mode:
        raise ValueError(
            "no input was given: expected --query DIR --database DIR, or --query-model with --data or --query-data/--database-data"
        )
    if args.query_model is None:
        raise ValueError(
            "--query-model is missing: expected the model artifact that encodes the queries"
        )
    pair = (args.query_data is not None, args.database_data is not None)
    if args.data is not None and any(pair):
        raise ValueError(
            "--data and --query-data/--database-data were both given: expected one way to choose the images"
        )
    if args.data is None and not all(pair):
        missing = "--database-data" if pair[0] else "--query-data"
        raise ValueError(
            f"{missing} is missing: expected --data SPEC, or both --query-data and --database-data"
        )
    if args.split_protocol is not None and args.data is None:
        raise ValueError("--split-protocol applies to --data only: expected --data SPEC with it")
    return "models"


def _encode_sides(args: argparse.Namespace):
    from hashkd.data import load_dataset
    from hashkd.encoding import encode_dataset, protocol_splits, select_split
    from hashkd.models import load_artifact

    qmodel = load_artifact(args.query_model)
    same = (
        args.database_model is None
        or Path(args.database_model).resolve() == Path(args.query_model).resolve()
    )
    dmodel = qmodel if same else load_artifact(args.database_model)
    dmodel_dir = args.query_model if same else args.database_model
    if qmodel.bits != dmodel.bits:
        raise ValueError(
            f"--query-model makes {qmodel.bits}-bit codes but --database-model makes {dmodel.bits}-bit codes: expected equal code lengths"
        )
    progress = not args.no_progress
    if args.data is not None:
        dataset = load_dataset(args.data, root=args.root)
        splits, info = protocol_splits(
            args.data, dataset, protocol=args.split_protocol, seed=args.seed
        )
        qds, qinfo = splits["query"], {"data_spec": args.data, "split": "query", **info}
        dds, dinfo = splits["database"], {"data_spec": args.data, "split": "database", **info}
    else:
        qds, qinfo = select_split(args.query_data, root=args.root)
        dds, dinfo = select_split(args.database_data, root=args.root)
    query = encode_dataset(qmodel, qds, batch_size=args.batch_size, progress=progress, meta=qinfo)
    query.meta["model"] = str(Path(args.query_model).resolve())
    database = encode_dataset(
        dmodel, dds, batch_size=args.batch_size, progress=progress, meta=dinfo
    )
    database.meta["model"] = str(Path(dmodel_dir).resolve())
    return query, database


# ----------------------------------------------------------------------------- output


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per evaluation result (protocol, bits, sizes, mAP@K, P@r<=R, tie-averaged mAP)."""
    k = {r["topk"] for r in rows}
    radius = {r["radius"] for r in rows}
    k_txt = str(k.pop()) if len(k) == 1 else "K"
    r_txt = str(radius.pop()) if len(radius) == 1 else "R"
    head = [
        "protocol",
        "bits",
        "queries",
        "database",
        f"mAP@{k_txt}",
        f"P@r<={r_txt}",
        f"mAP@{k_txt} (tie-avg)",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in rows:
        tie = r.get("map_tie_averaged")
        cells = [
            str(r.get("protocol", "")),
            str(r["bits"]),
            str(r["num_queries"]),
            str(r["num_database"]),
            f"{r['map']:.4f}",
            f"{r['precision_at_radius']:.4f}",
            "-" if tie is None else f"{tie:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: str, text: str) -> None:
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation the options describe and return the JSON-ready result."""
    from hashkd.metrics import evaluate_codes

    mode = _check_args(args)
    points = _parse_points(args.pn)
    if mode == "codes":
        query = _load_code_set(args.query, "query")
        database = _load_code_set(args.database, "database")
        sources = {"query": str(args.query), "database": str(args.database)}
    else:
        query, database = _encode_sides(args)
        sources = {
            "query_model": str(args.query_model),
            "database_model": str(args.database_model or args.query_model),
        }
        if args.save_codes:
            query.save(Path(args.save_codes) / "query")
            database.save(Path(args.save_codes) / "database")
    if query.bits != database.bits:
        raise ValueError(
            f"query codes are {query.bits} bits but database codes are {database.bits} bits: expected equal code lengths"
        )
    result = evaluate_codes(
        query.codes,
        database.codes,
        query.labels,
        database.labels,
        topk=args.topk,
        radius=args.radius,
        curves=True,
        pn_points=points,
        tie_averaged=not args.no_tie_average,
    )
    protocol, how = retrieval_protocol(query.meta, database.meta)
    if args.protocol is not None:
        protocol, how = args.protocol, "override"
    splits = {
        side: {k: cs.meta[k] for k in ("data_spec", "split", "protocol", "seed") if k in cs.meta}
        for side, cs in (("query", query), ("database", database))
    }
    models = {
        side: {k: cs.meta.get(k) for k in ("model", "model_digest", "backbone", "role")}
        for side, cs in (("query", query), ("database", database))
    }
    return {
        **result,
        "protocol": protocol,
        "protocol_source": how,
        "inputs": sources,
        "splits": splits,
        "models": models,
    }


def run(args: argparse.Namespace) -> int:
    result = evaluate(args)
    table = markdown_table([result])
    sys.stdout.write(table)
    if args.json:
        _write_text(args.json, json.dumps(result, indent=2, sort_keys=True) + "\n")
    if args.markdown:
        _write_text(args.markdown, table)
    if args.plots:
        from hashkd.plots import write_plots

        label = f"{result['protocol']}"
        for path in write_plots({label: result}, args.plots):
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
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, KeyError) as exc:
        if os.environ.get("HASHKD_DEBUG"):
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return fail(str(text))
