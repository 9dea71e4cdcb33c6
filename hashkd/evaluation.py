"""Evaluation of binary codes: the logic behind ``hashkd evaluate`` and the demo's results table.

One entry point, :func:`evaluate`, takes an :class:`EvaluationInputs` (two code sets, or model
artifacts and images to encode first) and returns the JSON-ready result: the figures of
:func:`hashkd.metrics.evaluate_codes`, the retrieval protocol (symmetric or asymmetric), the
inputs and splits, and the code health of both sides (:func:`hashkd.metrics.code_health`).
:func:`evaluate_code_sets` does the same for two :class:`hashkd.codes.CodeSet` in memory (the
demo), :func:`markdown_table` renders results, :func:`collapse_warnings` names collapsed code sets
and :func:`write_report` writes the JSON, Markdown and plot files.

The headline mAP is the tie-averaged one (``map_tie_averaged``: the expected mAP@K under a random
order of equal distances), which a collapsed or tie-heavy code set cannot inflate through the
order of the database; ``map`` (ties broken by database position) stands beside it.
See docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hashkd.codes import CodeSet

PROTOCOLS = ("symmetric", "asymmetric")
SIDES = ("query", "database")

__all__ = [
    "PROTOCOLS",
    "EvaluationInputs",
    "collapse_warnings",
    "evaluate",
    "evaluate_code_sets",
    "markdown_table",
    "retrieval_protocol",
    "shuffled",
    "skipped_summary",
    "write_report",
]


@dataclass
class EvaluationInputs:
    """What to evaluate and how; one field per ``hashkd evaluate`` option (errors name the option).

    Inputs, one of: ``query`` and ``database`` (code set directories); or ``query_model`` (and
    optionally ``database_model``) with ``data`` (the query and database splits of
    ``split_protocol`` drawn with ``seed``) or with ``query_data`` and ``database_data`` (every
    image of each source; the database is shuffled with ``seed``, :func:`shuffled`). ``cache``, ``cache_dir`` and ``strict`` say how image files are
    decoded (:func:`hashkd.data.use_data_options`; docs/data.md).
    """

    query: str | None = None
    database: str | None = None
    query_model: str | None = None
    database_model: str | None = None
    data: str | None = None
    split_protocol: str | None = None
    seed: int = 0
    query_data: str | None = None
    database_data: str | None = None
    root: str | None = None
    batch_size: int = 256
    cache: str = "auto"
    cache_dir: str = ".hashkd-cache"
    strict: bool = False
    save_codes: str | None = None
    progress: bool = True
    topk: int = 1000
    radius: int = 2
    pn_points: list[int] | None = None
    protocol: str | None = None
    tie_averaged: bool = True

    def mode(self) -> str:
        """Validate the combination of inputs; return ``"codes"`` or ``"models"``."""
        if self.topk <= 0:
            raise ValueError(f"--k {self.topk} is not valid: expected a positive integer")
        if self.radius < 0:
            raise ValueError(f"--radius {self.radius} is not valid: expected an integer >= 0")
        if self.batch_size <= 0:
            raise ValueError(
                f"--batch-size {self.batch_size} is not valid: expected a positive integer"
            )
        if self.pn_points is not None and (not self.pn_points or min(self.pn_points) < 1):
            raise ValueError(
                f"--pn {self.pn_points} is not valid: expected comma-separated positive integers"
            )
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(
                f"--retrieval-protocol {self.protocol!r} is not valid: expected one of {', '.join(PROTOCOLS)}"
            )
        code_mode = self.query is not None or self.database is not None
        model_opts = (
            self.query_model,
            self.database_model,
            self.data,
            self.query_data,
            self.database_data,
        )
        model_mode = any(x is not None for x in model_opts)
        if code_mode and model_mode:
            raise ValueError(
                "code sets (--query/--database) and models (--query-model ...) were both given: "
                "expected one kind of input"
            )
        if code_mode:
            if self.query is None or self.database is None:
                missing = "--database" if self.query is not None else "--query"
                raise ValueError(
                    f"{missing} is missing: expected both --query DIR and --database DIR"
                )
            return "codes"
        if not model_mode:
            raise ValueError(
                "no input was given: expected --query DIR --database DIR, or --query-model with "
                "--data or --query-data/--database-data"
            )
        if self.query_model is None:
            raise ValueError(
                "--query-model is missing: expected the model artifact that encodes the queries"
            )
        pair = (self.query_data is not None, self.database_data is not None)
        if self.data is not None and any(pair):
            raise ValueError(
                "--data and --query-data/--database-data were both given: "
                "expected one way to choose the images"
            )
        if self.data is None and not all(pair):
            missing = "--database-data" if pair[0] else "--query-data"
            raise ValueError(
                f"{missing} is missing: expected --data SPEC, or both --query-data and "
                "--database-data"
            )
        if self.split_protocol is not None and self.data is None:
            raise ValueError(
                "--split-protocol applies to --data only: expected --data SPEC with it"
            )
        return "models"


# ----------------------------------------------------------------------------- protocol and inputs


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


def _load_code_set(path: str, role: str) -> CodeSet:
    from hashkd.codes import CodeSet

    if not Path(path).is_dir():
        raise ValueError(
            f"{role} code set directory {path!r} does not exist: expected a folder with codes.npy "
            "and labels.npy"
        )
    cs = CodeSet.load(path)
    if cs.labels is None:
        raise ValueError(
            f"{role} code set {path!r} has no labels.npy: expected multi-hot labels to judge "
            "relevance"
        )
    return cs


def _encode_sides(inputs: EvaluationInputs) -> tuple[CodeSet, CodeSet, dict[str, str]]:
    """Both sides encoded, and the unreadable image files skipped (path -> reason).

    Image files are decoded once at the working resolution of the larger of the two models'
    image sizes, with the ``cache`` / ``cache_dir`` / ``strict`` options of ``inputs``.
    """
    from hashkd.data import load_dataset, use_data_options
    from hashkd.encoding import encode_dataset, protocol_splits, select_split
    from hashkd.models import load_artifact

    assert inputs.query_model is not None  # checked by mode()
    qmodel = load_artifact(inputs.query_model)
    same = (
        inputs.database_model is None
        or Path(inputs.database_model).resolve() == Path(inputs.query_model).resolve()
    )
    dmodel = qmodel if same else load_artifact(inputs.database_model)
    dmodel_dir = inputs.query_model if same else inputs.database_model
    if qmodel.bits != dmodel.bits:
        raise ValueError(
            f"--query-model makes {qmodel.bits}-bit codes but --database-model makes "
            f"{dmodel.bits}-bit codes: expected equal code lengths"
        )
    options = use_data_options(
        cache=inputs.cache,
        cache_dir=inputs.cache_dir,
        strict=inputs.strict,
        img_size=max(int(qmodel.config.img_size), int(dmodel.config.img_size)),
        progress=inputs.progress,
    )
    with options as report:
        if inputs.data is not None:
            dataset = load_dataset(inputs.data, root=inputs.root)
            splits, info = protocol_splits(
                inputs.data, dataset, protocol=inputs.split_protocol, seed=inputs.seed
            )
            qds, qinfo = splits["query"], {"data_spec": inputs.data, "split": "query", **info}
            dds, dinfo = splits["database"], {"data_spec": inputs.data, "split": "database", **info}
        else:
            qds, qinfo = select_split(inputs.query_data, root=inputs.root)
            dds, dinfo = select_split(inputs.database_data, root=inputs.root)
        kw = {"batch_size": inputs.batch_size, "progress": inputs.progress}
        query = encode_dataset(qmodel, qds, meta=qinfo, **kw)
        query.meta["model"] = str(Path(inputs.query_model).resolve())
        database = encode_dataset(dmodel, dds, meta=dinfo, **kw)
        database.meta["model"] = str(Path(dmodel_dir).resolve())
    if inputs.data is None:
        # a folder is often sorted by class: in file order, ties broken by position would
        # favour a collapsed code set; the protocol splits of --data are shuffled already
        database = shuffled(database, inputs.seed)
    return query, database, dict(report.skipped)


def shuffled(code_set: CodeSet, seed: int) -> CodeSet:
    """``code_set`` with its items (codes, ids, labels) in the order of a permutation drawn
    from ``seed`` (``numpy.random.default_rng(seed).permutation``); ``meta["order"]`` and
    ``meta["order_seed"]`` say so. The tie-averaged mAP does not depend on the order; the
    value with ties broken by database position does."""
    import numpy as np

    from hashkd.codes import CodeSet

    perm = np.random.default_rng(seed).permutation(len(code_set.ids))
    return CodeSet(
        codes=code_set.codes[perm],
        ids=code_set.ids[perm],
        labels=None if code_set.labels is None else code_set.labels[perm],
        meta={**code_set.meta, "order": "shuffled", "order_seed": int(seed)},
    )


# ----------------------------------------------------------------------------- evaluation


def evaluate_code_sets(
    query: CodeSet,
    database: CodeSet,
    *,
    topk: int = 1000,
    radius: int = 2,
    curves: bool = True,
    pn_points: Sequence[int] | None = None,
    tie_averaged: bool = True,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``query`` against ``database`` (both labelled); the JSON-ready result.

    The result holds every key of :func:`hashkd.metrics.evaluate_codes` plus ``protocol`` and
    ``protocol_source`` (read from the code sets' meta unless ``protocol`` overrides it),
    ``splits``, ``models`` and ``code_health`` (``{"query": ..., "database": ...}``, each
    :func:`hashkd.metrics.code_health`).
    """
    from hashkd.metrics import code_health, evaluate_codes

    if query.bits != database.bits:
        raise ValueError(
            f"query codes are {query.bits} bits but database codes are {database.bits} bits: "
            "expected equal code lengths"
        )
    result = evaluate_codes(
        query.codes,
        database.codes,
        query.labels,
        database.labels,
        topk=topk,
        radius=radius,
        curves=curves,
        pn_points=pn_points,
        tie_averaged=tie_averaged,
    )
    how = "override"
    if protocol is None:
        protocol, how = retrieval_protocol(query.meta, database.meta)
    sides = (("query", query), ("database", database))
    return {
        **result,
        "protocol": protocol,
        "protocol_source": how,
        "splits": {
            side: {
                k: cs.meta[k]
                for k in ("data_spec", "split", "protocol", "seed", "order", "order_seed")
                if k in cs.meta
            }
            for side, cs in sides
        },
        "models": {
            side: {k: cs.meta.get(k) for k in ("model", "model_digest", "backbone", "role")}
            for side, cs in sides
        },
        "code_health": {side: code_health(cs.codes) for side, cs in sides},
    }


def evaluate(inputs: EvaluationInputs) -> dict[str, Any]:
    """Load (or encode) both sides that ``inputs`` describe and evaluate them (JSON-ready).

    With models, ``result["inputs"]["skipped_files"]`` maps each unreadable image file that
    was skipped to the reason (:func:`skipped_summary` counts them in one line).
    """
    if inputs.mode() == "codes":
        assert inputs.query is not None and inputs.database is not None  # checked by mode()
        query = _load_code_set(inputs.query, "query")
        database = _load_code_set(inputs.database, "database")
        sources = {"query": str(inputs.query), "database": str(inputs.database)}
    else:
        query, database, skipped = _encode_sides(inputs)
        sources = {
            "query_model": str(inputs.query_model),
            "database_model": str(inputs.database_model or inputs.query_model),
            "skipped_files": skipped,
        }
        if inputs.save_codes:
            query.save(Path(inputs.save_codes) / "query")
            database.save(Path(inputs.save_codes) / "database")
    result = evaluate_code_sets(
        query,
        database,
        topk=inputs.topk,
        radius=inputs.radius,
        curves=True,
        pn_points=inputs.pn_points,
        tie_averaged=inputs.tie_averaged,
        protocol=inputs.protocol,
    )
    return {**result, "inputs": sources}


def skipped_summary(result: dict[str, Any]) -> str | None:
    """One line counting the image files ``result``'s encoding skipped, or ``None`` if none."""
    from hashkd.data import SkipReport

    return SkipReport(dict(result.get("inputs", {}).get("skipped_files", {}))).summary()


def collapse_warnings(result: dict[str, Any], name: str = "") -> list[str]:
    """One warning line per collapsed side of ``result`` (:func:`hashkd.metrics.collapse_warning`)."""
    from hashkd.metrics import collapse_warning

    prefix = f"{name} " if name else ""
    out = []
    for side in SIDES:
        text = collapse_warning(result["code_health"][side], f"{prefix}{side} codes")
        if text:
            out.append(text)
    return out


# ----------------------------------------------------------------------------- output


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _collapsed(health: dict[str, dict[str, Any]]) -> str:
    sides = [side for side in SIDES if health[side]["collapsed"]]
    return ", ".join(sides) if sides else "no"


def markdown_table(
    rows: Sequence[dict[str, Any]],
    names: Sequence[str] | None = None,
    name_header: str = "model",
) -> str:
    """A Markdown table, one row per evaluation result of :func:`evaluate_code_sets`.

    Columns: protocol, bits, sizes, the headline tie-averaged mAP@K, the mAP@K with ties broken by
    database position, P@r<=R, and the code health of both sides (distinct codes, bit balance,
    largest bucket, collapsed). ``names`` adds a first column (``name_header``) naming the rows.
    """
    if names is not None and len(names) != len(rows):
        raise ValueError(f"{len(names)} names for {len(rows)} rows: expected one name per row")
    k = {r["topk"] for r in rows}
    radius = {r["radius"] for r in rows}
    k_txt = str(k.pop()) if len(k) == 1 else "K"
    r_txt = str(radius.pop()) if len(radius) == 1 else "R"
    head = [
        "protocol",
        "bits",
        "queries",
        "database",
        f"mAP@{k_txt} (tie-avg)",
        f"mAP@{k_txt} (by position)",
        f"P@r<={r_txt}",
        "distinct codes (q / db)",
        "bit balance (q / db)",
        "largest bucket (db)",
        "collapsed",
    ]
    align = ["---"] * 1 + ["---:"] * 9 + ["---"]
    if names is not None:
        head, align = [name_header, *head], ["---", *align]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for i, r in enumerate(rows):
        q, d = r["code_health"]["query"], r["code_health"]["database"]
        cells = [
            str(r.get("protocol", "")),
            str(r["bits"]),
            str(r["num_queries"]),
            str(r["num_database"]),
            _fmt(r.get("map_tie_averaged")),
            _fmt(r["map"]),
            _fmt(r["precision_at_radius"]),
            f"{q['distinct_codes']} / {d['distinct_codes']}",
            f"{q['bit_balance']:.3f} / {d['bit_balance']:.3f}",
            f"{d['largest_bucket_fraction']:.1%}",
            _collapsed(r["code_health"]),
        ]
        if names is not None:
            cells.insert(0, names[i])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def write_report(
    result: dict[str, Any],
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    plots_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write ``result`` as JSON, its Markdown table, and its curves as PNG; the written paths."""
    written: list[Path] = []
    if json_path:
        _write_text(json_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
        written.append(Path(json_path))
    if markdown_path:
        _write_text(markdown_path, markdown_table([result]))
        written.append(Path(markdown_path))
    if plots_dir:
        from hashkd.plots import write_plots

        written.extend(write_plots({str(result["protocol"]): result}, plots_dir))
    return written
