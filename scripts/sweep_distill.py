"""Choose distillation settings on the VALIDATION split: a small grid, several seeds, one table.

Every setting of the grid is one ``hashkd distill`` run per seed. The figure each run is judged
by is its best validation mAP (tie-averaged, validation queries against the training split;
never the test queries: docs/evaluation.md), as the trainer records it in the student's
``config.json`` (``meta.val_map``). A collapsed validation epoch is never chosen (the
trainer's selection rule). For BRCD runs the kept-bit fraction of the bit mask is shown too.

Grid syntax: ``;``-separated axes, each ``KEY=V1,V2,...``. A KEY is a loss option
(``brcd.margin``, ``brcd.mask_mode``, ``brcd.k``, ``rkd.angle_weight``...), ``weight`` (the KD
loss's weight, for a single KD loss) or ``kd_inputs`` (``codes`` or ``logits``: what the KD loss
compares, ``hashkd distill``'s option)::

    python scripts/sweep_distill.py --teacher runs/digits/teacher64 --data digits --loss brcd \\
        --grid "brcd.margin=0.1,0.2,0.3,0.5;brcd.mask_mode=anchor,own" --seeds 0,1 \\
        --epochs 20 --backbone mobilenetv3_small_050 --out runs/sweep_brcd_mask

``--teacher-cache DIR`` codes the teacher's inputs once per seed and lets every setting of the
grid read them back (``hashkd distill --teacher-cache``; the runs train the same students).

Results: ``OUT/results.json`` (one row per run, with BRCD's cluster count k, the teacher's
digest and the code version; a re-run skips finished runs and resumes an interrupted one from
its last epoch; a re-run with another teacher, by content, is refused) and ``OUT/results.md`` (mean +- std per setting, best first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashkd.data import use_data_options  # noqa: E402
from hashkd.encoding import artifact_digest  # noqa: E402
from hashkd.io import atomic_write_json  # noqa: E402
from hashkd.losses.run_report import brcd_kept_fraction, brcd_setup  # noqa: E402
from hashkd.metrics import mean_std_text  # noqa: E402
from hashkd.models.artifact import read_config  # noqa: E402
from hashkd.training.distill import DistillConfig, distill  # noqa: E402
from hashkd.training.provenance import code_version  # noqa: E402
from hashkd.training.run_dir import CHECKPOINT_NAME  # noqa: E402


def parse_grid(text: str) -> list[dict[str, str]]:
    """``"a=1,2;b=x"`` -> ``[{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]`` (axes in order)."""
    axes: list[tuple[str, list[str]]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise ValueError(f"grid axis {part!r} is not valid: expected KEY=V1,V2,...")
        axes.append((key.strip(), options))
    if not axes:
        raise ValueError(f"grid {text!r} is empty: expected KEY=V1,V2[;KEY=...]")
    keys = [k for k, _ in axes]
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))
    ]


def setting_name(setting: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_config(
    args: argparse.Namespace, setting: dict[str, str], seed: int, out: Path
) -> DistillConfig:
    options: dict[str, dict[str, Any]] = {}
    weights = None
    kd_inputs = "codes"
    for key, value in setting.items():
        if key == "weight":
            weights = [float(value)]
            continue
        if key == "kd_inputs":
            kd_inputs = value
            continue
        loss, sep, option = key.partition(".")
        if not sep:
            raise ValueError(
                f"grid key {key!r} is not valid: expected LOSS.OPTION, weight or kd_inputs"
            )
        options.setdefault(loss, {})[option] = _value(value)
    return DistillConfig(
        out=str(out),
        teacher=args.teacher,
        student=args.student,
        losses=[args.loss],
        weights=weights,
        loss_options=options,
        kd_inputs=kd_inputs,
        data=args.data,
        protocol=args.protocol,
        seed=seed,
        epochs=args.epochs,
        view_bank=args.view_bank,
        val_every=args.val_every,
        max_train=args.max_train,
        teacher_cache=args.teacher_cache,
        progress=False,
        resume=(out / CHECKPOINT_NAME).is_file(),  # an interrupted run continues
    )


def _seed(run: dict[str, Any]) -> int:
    return int(run["seed"])


def summarise(rows: list[dict[str, Any]]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(r)

    order = sorted(groups, key=lambda s: -float(np.mean([r["val_map"] for r in groups[s]])))
    lines = [
        "| setting | n | val mAP (tie-averaged) | by seed | collapsed runs | kept bits | BRCD k |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in order:
        g = groups[s]
        kept = [r["kept_fraction"] for r in g if r["kept_fraction"] is not None]
        kept_text = f"{np.mean(kept):.2f}" if kept else "-"
        ks = sorted({r["brcd_k"] for r in g if r.get("brcd_k") is not None})
        k_text = "/".join(map(str, ks)) or "-"
        collapsed = sum(bool(r["val_collapsed"]) for r in g)
        val = mean_std_text([r["val_map"] for r in g])
        # each seed is its own split: settings compare seed by seed (the spread is mostly splits)
        by_seed = ", ".join(f"{r['seed']}: {r['val_map']:.4f}" for r in sorted(g, key=_seed))
        lines.append(
            f"| {s} | {len(g)} | {val} | {by_seed} | {collapsed} | {kept_text} | {k_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The sweep; image files are decoded without progress bars (one log line per run)."""
    with use_data_options(progress=False):
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", required=True)
    p.add_argument("--loss", required=True, help="the one KD loss whose settings are swept")
    p.add_argument("--grid", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--backbone", dest="student", default="mobilenetv3_small_100")
    p.add_argument("--data", default="digits")
    p.add_argument("--split-protocol", dest="protocol", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--view-bank", type=int, default=4)
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument(
        "--teacher-cache",
        metavar="DIR",
        default=None,
        help="keep the teacher's logits of the training images and views in DIR and share them "
        "between the grid's runs of one seed (hashkd distill --teacher-cache; no result changes)",
    )
    p.add_argument("--out", required=True)
    from hashkd.cli.vocabulary import add_deprecated_aliases

    add_deprecated_aliases(p, "scripts/sweep_distill.py")
    args = p.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        read_config(args.teacher)
    except ValueError as exc:
        print(f"sweep_distill: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    rows: list[dict[str, Any]] = (
        json.loads(results_path.read_text()) if results_path.is_file() else []
    )
    digest = artifact_digest(args.teacher)
    others = sorted({r["teacher_digest"] for r in rows if r.get("teacher_digest")} - {digest})
    if others:
        print(
            f"sweep_distill: error: {results_path} holds runs of another teacher (digest "
            f"{others[0][:12]}, {args.teacher} is {digest[:12]}): expected a new --out",
            file=sys.stderr,
        )
        return 2
    done = {(r["setting"], r["seed"]) for r in rows}
    for setting in grid:
        for seed in seeds:
            name = setting_name(setting)
            if (name, seed) in done:
                continue
            run_dir = out / name.replace(" ", "_").replace("=", "-") / f"seed{seed}"
            cfg = run_config(args, setting, seed, run_dir)
            artifact = distill(cfg)
            meta = json.loads((Path(artifact) / "config.json").read_text()).get("meta", {})
            rows.append(
                {
                    "setting": name,
                    "seed": seed,
                    "val_map": float(meta["val_map"]),
                    "val_map_position": meta.get("val_map_position"),
                    "val_collapsed": bool(meta.get("val_collapsed")),
                    "kept_fraction": brcd_kept_fraction(meta),
                    "brcd_k": (brcd_setup(meta) or {}).get("k"),
                    "kd_inputs": meta.get("kd_inputs", "codes"),
                    "epoch": meta.get("epoch"),
                    "teacher_digest": meta.get("teacher_digest"),
                    "code_version": code_version(),
                }
            )
            atomic_write_json(results_path, rows)
            print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
