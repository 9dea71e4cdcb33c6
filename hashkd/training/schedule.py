"""A per-step learning-rate schedule whose state fits in a checkpoint.

``constant``: the base rate; ``cosine``: half-cosine decay from the base rate to 0 at the last
step. Both start with ``warmup_steps`` of linear warm-up (``base * (step + 1) / warmup``),
the formula of :func:`hashkd.training.pretrain.lr_at`. The rate is a function of the global
step only, so a run resumed from a checkpoint follows the same curve as one never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from hashkd.training.pretrain import lr_at

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class StepSchedule:
    """The learning rate of every optimiser step (module docstring)."""

    kind: str
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    step: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(
                f"lr-schedule={self.kind!r} is not valid: expected one of {', '.join(LR_SCHEDULES)}"
            )
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warm-up of {self.warmup_steps} steps in a run of {self.total_steps} is not valid: "
                "expected 0 <= warm-up <= total steps"
            )

    def lr_at(self, step: int) -> float:
        if self.kind == "cosine":
            return lr_at(step, self.total_steps, self.warmup_steps, self.base_lr)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set the rate of the current step on every parameter group; returns it."""
        lr = self.lr_at(self.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the curve (kind, base rate, lengths) must be the same.

        A constant schedule does not depend on the run's length, so such a run may be
        resumed for more epochs; a cosine one may not (its decay would change).
        """
        ignored = {"step"} if self.kind == "cosine" else {"step", "total_steps"}
        mine = {k: v for k, v in self.state_dict().items() if k not in ignored}
        saved = {k: state.get(k) for k in mine}
        if saved != mine:
            changed = ", ".join(
                f"{k}={saved[k]!r} (now {mine[k]!r})" for k in mine if saved[k] != mine[k]
            )
            raise ValueError(
                f"--resume: the checkpoint's learning-rate schedule has {changed}: expected the "
                "same schedule, epochs, batch size and training images as the run being resumed"
            )
        self.step = int(state["step"])
