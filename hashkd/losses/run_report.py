"""What a distillation run records about its losses: weights, their source, fitted state.

The trainer writes :func:`loss_setup` into the run's metadata (``run.json`` and the
student artifact's ``config.json``) and prints it; :func:`epoch_log_fields` are repeated
in every epoch's record of ``train_log.jsonl``, so a reader of the log alone sees them.
:func:`recorded_losses`, :func:`recorded_weights`, :func:`brcd_kept_fraction` and
:func:`brcd_setup` read them
back from a student's metadata (the benchmark and sweep scripts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hashkd.losses.base import DistillLoss
from hashkd.losses.registry import weight_table


def loss_setup(
    names: Sequence[str], weights: Sequence[float] | None, losses: Sequence[DistillLoss]
) -> list[dict[str, Any]]:
    """One row per loss: name, weight, where the weight comes from, and ``loss.report()``."""
    rows = weight_table(names, weights)
    for row, loss in zip(rows, losses, strict=True):
        report = loss.report()
        if report:
            row["report"] = report
    return rows


def epoch_log_fields(names: Sequence[str], losses: Sequence[DistillLoss]) -> dict[str, float]:
    """``{"<loss>.<field>": value}`` from every loss's :meth:`DistillLoss.log_fields`."""
    return {
        f"{name}.{key}": value
        for name, loss in zip(names, losses, strict=True)
        for key, value in loss.log_fields().items()
    }


def recorded_losses(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The :func:`loss_setup` rows a run wrote into a student's metadata (``meta["losses"]``)."""
    rows = meta.get("losses")
    return rows if isinstance(rows, list) else []


def recorded_weights(meta: dict[str, Any]) -> list[float]:
    """The weight each KD loss of a run was trained with, as the run recorded it."""
    return [float(row["weight"]) for row in recorded_losses(meta) if "weight" in row]


def brcd_kept_fraction(meta: dict[str, Any]) -> float | None:
    """The mean fraction of bits BRCD's mask kept in a run (1.0 with the mask off): the
    report's ``applied_mean_kept_fraction`` (else ``mean_kept_fraction``); None without BRCD."""
    for row in recorded_losses(meta):
        report = row.get("report") or {}
        if row.get("loss") != "brcd":
            continue
        for key in ("applied_mean_kept_fraction", "mean_kept_fraction"):
            if isinstance(report.get(key), (int, float)):
                return float(report[key])
    return None


def brcd_setup(meta: dict[str, Any]) -> dict[str, Any] | None:
    """BRCD's cluster count ``k``, ``mask_mode`` and ``margin`` as a run recorded them (the
    report of its ``losses`` row); None without BRCD."""
    for row in recorded_losses(meta):
        if row.get("loss") == "brcd":
            report = row.get("report") or {}
            return {key: report.get(key) for key in ("k", "mask_mode", "margin")}
    return None
