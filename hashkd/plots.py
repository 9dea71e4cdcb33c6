"""PNG plots of retrieval curves (matplotlib, Agg canvas: no display, no global backend change).

Input: the ``curves`` of :func:`hashkd.metrics.evaluate_codes` results, one or several (to
compare methods on one figure): ``{"label": result, ...}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PR_CURVE_FILE = "pr_curve.png"
PRECISION_AT_N_FILE = "precision_at_n.png"


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _curves(result: Mapping[str, Any]) -> Mapping[str, Any]:
    curves = result.get("curves")
    if not curves:
        raise ValueError(
            "the evaluation result has no curves: expected evaluate_codes(..., curves=True)"
        )
    return curves


def _label(name: str, result: Mapping[str, Any]) -> str:
    return f"{name} ({result.get('bits', '?')} bits)" if name else f"{result.get('bits', '?')} bits"


def plot_pr_curve(results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Precision-recall of Hamming lookup over radius 0..K (one line per result)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, result in results.items():
        pr = _curves(result)["pr_radius"]
        ax.plot(pr["recall"], pr["precision"], marker=".", label=_label(name, result))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.0)
    ax.set_title("Precision-recall over Hamming radius")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def plot_precision_at_n(
    results: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Precision@N (left) and recall@N (right) of Hamming ranking (one line per result)."""
    fig = _figure(9.0, 4.0)
    ax_p = fig.add_subplot(1, 2, 1)
    ax_r = fig.add_subplot(1, 2, 2)
    for name, result in results.items():
        pn = _curves(result)["precision_at_n"]
        ax_p.plot(pn["n"], pn["precision"], marker=".", label=_label(name, result))
        ax_r.plot(pn["n"], pn["recall"], marker=".", label=_label(name, result))
    for ax, what in ((ax_p, "precision"), (ax_r, "recall")):
        ax.set_xlabel("N (items retrieved)")
        ax.set_ylabel(f"{what}@N")
        ax.set_ylim(0, 1.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    ax_p.set_title("Precision@N")
    ax_r.set_title("Recall@N")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def write_plots(
    results: Mapping[str, Mapping[str, Any]], directory: str | os.PathLike[str]
) -> list[Path]:
    """Write :data:`PR_CURVE_FILE` and :data:`PRECISION_AT_N_FILE` into ``directory`` (created)."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"plots directory {str(out)!r} is a file: expected a directory")
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_pr_curve(results, out / PR_CURVE_FILE),
        plot_precision_at_n(results, out / PRECISION_AT_N_FILE),
    ]
