"""Relational Knowledge Distillation (Park et al., CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """psi_D: pairwise distances divided by the mean of the non-zero ones."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp(min=1e-12)
    off_diagonal = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    d = d2.sqrt() * off_diagonal  # clamped sqrt: finite gradients for coincident points
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def angles(x: torch.Tensor) -> torch.Tensor:
    """psi_A(i, j, k) = <normalize(x_j - x_i), normalize(x_k - x_i)>, a B x B x B tensor."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


@register_loss("rkd")
class RKDLoss(DistillLoss):
    """Relational KD (Park et al., "Relational Knowledge Distillation", CVPR 2019).

    Distance: ``psi_D(i,j) = ||x_i - x_j|| / mu`` (mu = mean non-zero distance, per
    network); ``L_D = smooth_l1(psi_D^s, psi_D^t)``. Angle: ``psi_A(i,j,k) =
    <normalize(x_j - x_i), normalize(x_k - x_i)>``; ``L_A = smooth_l1`` over the B^3
    triplets (memory O(B^2 d)). ``L = w_d L_D + w_a L_A``; defaults 1 and 2 (the paper's
    metric-learning setting; 25 and 50 for classification). Averaged over the views
    present. Any widths; 0 when the student is a similarity transform (scale, rotation,
    translation) of the teacher. Example: ``build_loss("rkd", w_dist=25, w_angle=50)``.
    State: none.
    """

    def __init__(self, w_dist: float = 1.0, w_angle: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if w_dist < 0 or w_angle < 0:
            raise ValueError(
                f"rkd weights w_dist={w_dist}, w_angle={w_angle} are not valid: expected non-negative numbers"
            )
        self.w_dist = float(w_dist)
        self.w_angle = float(w_angle)

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch, min_size=2)
        terms = []
        for s, t in self.pairs(batch):
            loss = s.new_zeros(())
            if self.w_dist:
                loss = loss + self.w_dist * F.smooth_l1_loss(
                    normalized_distances(s), normalized_distances(t)
                )
            if self.w_angle:
                loss = loss + self.w_angle * F.smooth_l1_loss(angles(s), angles(t))
            terms.append(loss)
        return torch.stack(terms).mean()
