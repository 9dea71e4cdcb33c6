#!/usr/bin/env python
"""The distillation tables of docs/bench-distill.md, rebuilt from the results files in the repository.

A table in a Markdown file is a block between two markers naming its results file (a path
relative to the repository) and, optionally, which rows to show::

    <!-- distill-table: benchmarks/distill/table16.json bits=16 models=teacher|BRCD: + bit mask (full) -->
    ...rebuilt by this script...
    <!-- /distill-table -->

A ``scripts/bench_distill.py`` results file (a dict with ``rows``) becomes its table
(``bench_distill.table_lines``: mean ± std over seeds, the worst seed's code health, BRCD's k
and mask); a ``scripts/sweep_distill.py`` results file (a list of runs) becomes the sweep's
table (``sweep_distill.summarise``).

    python scripts/distill_tables.py                 # rewrite the blocks of docs/bench-distill.md
    python scripts/distill_tables.py --check         # exit 1 if a block differs from its file
    python scripts/distill_tables.py --import RUN/results.json benchmarks/distill/NAME.json \\
        --runs-root RUN_PARENT                       # copy a run's results into the repository

``--import`` writes the results file with every absolute path made relative to
``--runs-root`` (default: the folder above the results file's folder), prefixed ``runs/``,
so no machine path is committed; digests and sha256 sums are kept as they are. Given several
results files before DEST (one table's seeds or rows run as separate processes or on several
machines), it merges them into one: their settings and inputs must be the same, no student row
(bits, model, seed) or sweep run (setting, seed) may come twice (a teacher row that several
processes measured is kept once when the copies agree), and each row keeps its own
``code_version``. Per-loss settings (``loss_weights``, ``loss_options``) merge as their union,
so one table's rows can run as separate processes each with the weights of its own losses; a
loss set differently in two files, or run at its default in one and set in another, is
refused.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = re.compile(
    r"(?P<open><!-- distill-table: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /distill-table -->)",
    re.S,
)


@functools.cache
def _script(name: str):
    """The module of ``scripts/NAME.py``, loaded once (every table block and merge uses it)."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parent / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"FILE bits=16 models=a|b"`` -> ``("FILE", {"bits": "16", "models": "a|b"})``; a value
    runs to the next `` key=`` (model names hold spaces)."""
    parts = re.split(r" (?=\w+=)", spec.strip())
    path, filters = parts[0], {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key not in ("bits", "models"):
            raise ValueError(
                f"distill-table filter {key!r} is not known: expected bits= or models="
            )
        filters[key] = value.strip()
    return path, filters


def render(spec: str, root: Path | None = None) -> str:
    """The Markdown of one block (without the markers); ``root``: the repository."""
    root = ROOT if root is None else root
    path, filters = parse_spec(spec)
    data: Any = json.loads((root / path).read_text())
    if isinstance(data, list):  # a sweep
        return _script("sweep_distill").summarise(data) + "\n"
    rows = data["rows"]
    if "bits" in filters:
        bits = {int(b) for b in filters["bits"].split(",")}
        rows = [r for r in rows if r["bits"] in bits]
    if "models" in filters:
        models = filters["models"].split("|")
        rows = [r for r in rows if r["model"] in models]
    if not rows:
        raise ValueError(f"distill-table {spec!r} selects no row of {path}")
    bench = _script("bench_distill")
    return "\n".join(bench.table_lines(rows, data["protocol"], data.get("topk", 1000))) + "\n"


def rebuild(text: str, root: Path | None = None) -> str:
    """``text`` with every block's body replaced by its rendered table."""
    return BLOCK.sub(
        lambda m: m["open"] + render(m["spec"], root) + m["close"],
        text,
    )


def relative_paths(value: Any, runs_root: Path) -> Any:
    """Every absolute path string of a JSON value made ``runs/<relative to runs_root>`` (or its
    file name when it lies elsewhere)."""
    if isinstance(value, dict):
        return {k: relative_paths(v, runs_root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, runs_root) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        p = Path(value)
        try:
            return str(Path("runs") / p.relative_to(runs_root))
        except ValueError:
            return p.name
    return value


#: keys of a bench_distill results file that may differ between the files of one table
MERGED_KEYS = ("rows", "seeds", "code_version")
#: per-loss settings (``--loss-weight``, ``--loss-opt``): files whose rows use other losses
#: (bench_distill refuses a setting for a loss none of its rows uses) merge as their union
PER_LOSS_KEYS = ("loss_weights", "loss_options")


def per_loss_union(parts: list[dict], key: str) -> dict:
    """The union of the parts' ``key`` (a mapping loss -> setting). ValueError when two parts
    set one loss differently, or when a part's rows use a loss another part set while it ran
    that loss at its default (its rows would be told apart by nothing in the merged file)."""
    variants = _script("bench_distill").VARIANTS
    union: dict = {}
    for part in parts:
        for loss, value in part.get(key, {}).items():
            if union.setdefault(loss, value) != value:
                raise ValueError(f"the results files set {key} of {loss} differently")
    for part in parts:
        used = {
            loss
            for row in part["rows"]
            if row["model"] in variants
            for loss in variants[row["model"]][0]
        }
        default = sorted((used & union.keys()) - part.get(key, {}).keys())
        if default:
            raise ValueError(
                f"one results file ran {', '.join(default)} at its default {key} and another set it"
            )
    return union


#: how far two measurements of one teacher row may differ and still be the same measurement
TEACHER_ROW_ATOL = 1e-6


def shared_teacher_rows_once(rows: list[dict]) -> list[dict]:
    """``rows`` with a teacher row measured by several of the files (each bench_distill process
    measures the teacher of its seeds) kept once. ValueError when the repeats disagree: then
    they are not the same teacher on the same splits."""
    teachers: dict[tuple, dict] = {}
    out = []
    for row in rows:
        key = (row["bits"], row["model"], row["seed"])
        if row["model"] != "teacher":
            out.append(row)
        elif key not in teachers:
            teachers[key] = row
            out.append(row)
        else:
            first = teachers[key]
            for metric in ("map_sym", "map_sym_position", "p_r2"):
                a, b = first.get(metric), row.get(metric)
                if (a is None) != (b is None) or (a is not None and abs(a - b) > TEACHER_ROW_ATOL):
                    raise ValueError(
                        f"the {row['bits']}-bit teacher row of seed {row['seed']} differs "
                        f"between the results files ({metric} {a} vs {b})"
                    )
    return out


def merge_results(parts: list[Any]) -> Any:
    """One results value from several of one table: sweep lists concatenated, bench_distill dicts
    with their rows concatenated and their seeds joined (a teacher row that several files
    measured, once). ValueError on other settings or inputs or a repeated student row."""
    if all(isinstance(p, list) for p in parts):
        merged = [run for part in parts for run in part]
        keys = [(r["setting"], r["seed"]) for r in merged]
        digests = {r.get("teacher_digest") for r in merged}
        if len(digests) > 1:
            raise ValueError("the sweeps ran on different teachers (their teacher_digest differs)")
    elif all(isinstance(p, dict) for p in parts):
        ignored = MERGED_KEYS + PER_LOSS_KEYS
        first = {k: v for k, v in parts[0].items() if k not in ignored}
        for part in parts[1:]:
            other = {k: v for k, v in part.items() if k not in ignored}
            differing = sorted(
                k for k in first.keys() | other.keys() if first.get(k) != other.get(k)
            )
            if differing:
                raise ValueError(f"the results files differ in {', '.join(differing)}")
        rows = shared_teacher_rows_once([row for part in parts for row in part["rows"]])
        keys = [(r["bits"], r["model"], r["seed"]) for r in rows]
        seeds = sorted({seed for part in parts for seed in part.get("seeds", [])})
        merged = {**parts[0], "rows": rows, "seeds": seeds}
        for key in PER_LOSS_KEYS:
            if any(key in part for part in parts):
                merged[key] = per_loss_union(parts, key)
    else:
        raise ValueError("a sweep's results cannot be merged with a table's")
    repeated = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if repeated:
        raise ValueError(f"{repeated[0]} comes in more than one results file")
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("docs", nargs="*", default=["docs/bench-distill.md"])
    ap.add_argument("--check", action="store_true", help="exit 1 if a block is out of date")
    ap.add_argument(
        "--import",
        dest="import_",
        nargs="+",
        metavar="RESULTS",
        help="RESULTS [RESULTS ...] DEST: copy (several: merge) run results into the repository",
    )
    ap.add_argument("--runs-root", default=None)
    args = ap.parse_args(argv)
    if args.import_:
        if len(args.import_) < 2:
            ap.error("--import needs RESULTS [RESULTS ...] DEST")
        *sources, dest = (Path(p) for p in args.import_)
        for src in sources:
            if not src.is_file():
                ap.error(f"--import {src}: no such results file")
        runs_root = Path(args.runs_root or sources[0].resolve().parent.parent).resolve()
        parts = [relative_paths(json.loads(src.read_text()), runs_root) for src in sources]
        try:
            data = merge_results(parts) if len(parts) > 1 else parts[0]
        except ValueError as exc:
            ap.error(f"--import: {exc}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"wrote {dest}")
        return 0
    stale = []
    for doc in args.docs:
        path = Path(doc) if Path(doc).is_absolute() else ROOT / doc
        text = path.read_text()
        try:
            new = rebuild(text)
        except (OSError, ValueError, KeyError) as exc:
            print(f"distill_tables: {doc}: {exc}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(doc)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"distill_tables: out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
