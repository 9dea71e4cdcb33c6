"""Similarity-Preserving KD (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


def batch_gram(f: torch.Tensor) -> torch.Tensor:
    """Row-normalised batch Gram matrix: ``G = normalize_rows(Q Q^T)``, Q = flatten(f), B x B."""
    q = f.reshape(f.shape[0], -1)
    return F.normalize(q @ q.t(), p=2, dim=1)


@register_loss("sp")
class SimilarityPreservingLoss(DistillLoss):
    """Similarity-Preserving KD (Tung & Mori, "Similarity-Preserving Knowledge
    Distillation", ICCV 2019).

    ``G = Q Q^T`` over the batch (B x B, Q = flatten(f)), each row L2-normalised;
    ``L_sp = ||G_t - G_s||_F^2 / B^2`` (the mean squared difference of the two Grams).
    Averaged over the views present. Works for any widths (no projection); invariant to
    scaling and rotating the student; 0 when the student equals the teacher.

    The batch Gram is the point: passing raw ``B x K`` tensors to a list-of-layers API
    (as a hashing code base did) computes a per-sample ``K x K`` loss instead.
    Default weight 3000 (the paper's gamma for its CIFAR-10 experiments): at weight 1 the
    term is about 1% of the CIBHash gradient, i.e. no distillation at all.
    Example: ``build_loss("sp")``. State: none.
    """

    default_weight = 3000.0
    default_weight_note = "Tung & Mori 2019: gamma = 3000 (CIFAR-10 experiments)"

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch, min_size=2)
        terms = []
        for s, t in self.pairs(batch):
            diff = batch_gram(t) - batch_gram(s)
            terms.append((diff * diff).sum() / (s.shape[0] ** 2))
        return torch.stack(terms).mean()
