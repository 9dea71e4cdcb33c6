"""Relational Knowledge Distillation (Park et al., CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.pairwise import pairwise_distances, unit_differences
from hashkd.losses.registry import register_loss


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """psi_D: pairwise distances divided by the mean of the non-zero ones.

    Coincident rows (duplicate codes, the diagonal) have distance exactly 0 and pass no
    gradient through their own distance (the norm has no direction at 0).
    """
    d = pairwise_distances(x)
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def angles(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(psi_A, defined)``: psi_A(i, j, k) = <normalize(x_j - x_i), normalize(x_k - x_i)>
    (B x B x B) and the B x B mask of pairs (i, j) whose difference has a direction."""
    e, distinct = unit_differences(x)
    return torch.bmm(e, e.transpose(1, 2)), distinct


def angle_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """smooth_l1 between the student's and the teacher's angles, over the defined triplets.

    A triplet (i, j, k) is defined when x_j - x_i and x_k - x_i are non-zero for both
    networks; the others (i = j, i = k, duplicate codes on either side) add neither loss
    nor gradient. The sum is divided by B^3, as the authors' code averages over all B^3
    entries (whose i = j and i = k entries are 0 on both sides): without duplicates the
    value is theirs.
    """
    a_s, defined_s = angles(s)
    a_t, defined_t = angles(t)
    pairs = defined_s & defined_t
    triplets = (pairs.unsqueeze(2) & pairs.unsqueeze(1)).to(a_s.dtype)
    per_triplet = F.smooth_l1_loss(a_s, a_t.to(a_s.dtype), reduction="none")
    return (per_triplet * triplets).sum() / per_triplet.numel()


@register_loss("rkd")
class RKDLoss(DistillLoss):
    """Relational KD (Park et al., "Relational Knowledge Distillation", CVPR 2019).

    Distance: ``psi_D(i,j) = ||x_i - x_j|| / mu`` (mu = mean non-zero distance, per
    network); ``L_D = smooth_l1(psi_D^s, psi_D^t)``. Angle: ``psi_A(i,j,k) =
    <normalize(x_j - x_i), normalize(x_k - x_i)>``; ``L_A = smooth_l1`` over the B^3
    triplets (memory O(B^2 d)). ``L = w_d L_D + w_a L_A``; ``w_d = 1, w_a = 2`` here, and
    the registry's ``default_weight`` 25 scales both to the paper's 25 and 50. Averaged
    over the views present. Any widths; 0 when the student is a similarity transform
    (scale, rotation, translation) of the teacher.

    Duplicate codes (two images with the same ±1 code, common with straight-through
    codes) give a zero difference whose direction is undefined: such pairs are dropped
    from the angle term, and their distance is exactly 0 with no gradient through it (see
    :mod:`hashkd.losses.pairwise`). Example: ``build_loss("rkd", w_dist=25, w_angle=50)``.
    State: none.
    """

    default_weight = 25.0
    default_weight_note = (
        "Park et al. 2019: distance 25, angle 50 (= 25 x the built-in w_dist=1, w_angle=2)"
    )

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
                    normalized_distances(s), normalized_distances(t).to(s.dtype)
                )
            if self.w_angle:
                loss = loss + self.w_angle * angle_loss(s, t)
            terms.append(loss)
        return torch.stack(terms).mean()
