"""What a distillation run records about its losses: weights, their source, fitted state.

The trainer writes :func:`loss_setup` into the run's metadata (``run.json`` and the
student artifact's ``config.json``) and prints it; :func:`epoch_log_fields` are repeated
in every epoch's record of ``train_log.jsonl``, so a reader of the log alone sees them.
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
