"""Same-view code alignment: the plain code-level KD baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


@register_loss("align")
class AlignLoss(DistillLoss):
    """Same-view code alignment: ``L = mean_i (1 - cos(s_i, t_i))``.

    The baseline docs/losses.md calls "kd on codes"; it is what the released BRCD script
    effectively runs, because its bit mask is all zeros. Averaged
    over the views present (``(s1, t1)`` and ``(s2, t2)``). 0 when the student equals the
    teacher up to a positive scale, 2 when it is its opposite.

    Inputs: codes (±1 STE codes) or features. State: a learned ``Linear(student_dim,
    teacher_dim)`` projection when the widths differ.
    Example: ``build_loss("align")``.
    """

    needs_same_dim = True

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch)
        terms = [
            (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean() for s, t in self.pairs(batch)
        ]
        return torch.stack(terms).mean()
