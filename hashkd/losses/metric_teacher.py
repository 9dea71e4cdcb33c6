"""Relative and absolute teachers (Yu et al., "Learning Metrics from Teachers: Compact
Networks for Image Embedding", CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """B x B Euclidean distance matrix ``sqrt(clamp(||x_i - x_j||^2, 1e-12))`` (authors' code form)."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


@register_loss("relative_teacher")
class RelativeTeacherLoss(DistillLoss):
    """Relative teacher (Yu et al., CVPR 2019): match the pairwise distances.

    With L2-normalised embeddings (``normalize=True``, as in the paper) and D the B x B
    Euclidean distance matrix (``sqrt(clamp(., 1e-12))``):
    ``L_rel = ||D_s - D_t||_F`` — the authors' code form: Frobenius norm, not squared,
    no 1/B^2. Averaged over the views present. Works for any widths; invariant to
    rotating the student; 0 when the student equals the teacher (up to the 1e-6 floor
    of the diagonal, identical on both sides). Code weights: 0.1-1.0 (default 1.0).
    Example: ``build_loss("relative_teacher")``. State: none.
    """

    def __init__(self, normalize: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize = bool(normalize)

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch, min_size=2)
        terms = []
        for s, t in self.pairs(batch):
            if self.normalize:
                s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
            terms.append(torch.linalg.matrix_norm(euclidean_distances(s) - euclidean_distances(t)))
        return torch.stack(terms).mean()


@register_loss("absolute_teacher")
class AbsoluteTeacherLoss(DistillLoss):
    """Absolute teacher (Yu et al., CVPR 2019): match each embedding directly.

    ``L_abs = mean_i ||f_s(i) - f_t(i)||_2`` (not squared) on L2-normalised embeddings
    (``normalize=True``). Needs equal widths: a learned ``Linear(student_dim,
    teacher_dim)`` projection is built when they differ (its parameters are in
    ``loss.parameters()``). 0 when the student equals the teacher. Code weights 1.0-2.0.
    Example: ``build_loss("absolute_teacher", student_dim=32, teacher_dim=64)``.
    """

    needs_same_dim = True

    def __init__(self, normalize: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize = bool(normalize)

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch)
        terms = []
        for s, t in self.pairs(batch):
            if self.normalize:
                s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
            # sqrt of a clamped square: the gradient stays finite when s == t
            terms.append(((s - t) ** 2).sum(dim=1).clamp(min=1e-12).sqrt().mean())
        return torch.stack(terms).mean()
