"""LSH feature mimicking (Wang, Ge, Wu, "Distilling Knowledge by Mimicking Features",
TPAMI 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss, as_sign_tensor
from hashkd.losses.registry import register_loss


@register_loss("lsh")
class LSHLoss(DistillLoss):
    """LSH + L2 feature mimicking (Wang, Ge, Wu; TPAMI 2021).

        A fixed random projection ``W ~ N(0, std^2)`` (``num_hashes x D``) and bias ``b``,
        both frozen: ``h_t = W f_t + b``, ``h_s = W f_s + b``, target bits
        ``y = 1[h_t > 0]``; ``L_lsh = BCEWithLogits(h_s, y)`` (mean) and
        ``L = beta * (w * mse(f_s, f_t) + L_lsh)``, beta = 6, ``w = mse_weight = 1`` (0 gives
    the paper's "LSH only" ablation). The views present are stacked.

        ``fit(teacher_codes, teacher_features)`` sets ``b = -median_n(W f_t(n))`` over the
        training set, so each hash function fires on half the teacher's samples (the paper's
        default; before ``fit`` the bias is 0, the paper's ImageNet setting). It reads the
        codes or the features according to ``inputs``. ``L_lsh`` is not 0 at ``f_s = f_t``;
        its gradient moves ``f_s`` to the teacher's side of every hyperplane.

        ``std`` defaults to ``1/sqrt(D)`` (unit-variance hash values for unit-scale inputs);
        the paper uses the std of the teacher's last linear layer weights — pass it. A learned
        ``Linear(student_dim, teacher_dim)`` embedding of the student is built when widths
        differ. State: buffers ``weight`` (W), ``bias``; W drawn from a generator seeded by
        ``seed``. Example: ``build_loss("lsh", inputs="features", student_dim=256,
        teacher_dim=192, num_hashes=2048)``.
    """

    needs_same_dim = True
    default_weight_note = (
        "1: the paper's beta = 6 is already inside the loss; confirm by a validation sweep"
    )

    def __init__(
        self,
        num_hashes: int = 2048,
        beta: float = 6.0,
        mse_weight: float = 1.0,
        std: float | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_hashes, int) or num_hashes <= 0:
            raise ValueError(f"num_hashes={num_hashes!r} is not valid: expected a positive integer")
        if std is not None and std <= 0:
            raise ValueError(f"std={std!r} is not valid: expected a positive number")
        self.num_hashes = num_hashes
        self.beta = float(beta)
        self.mse_weight = float(mse_weight)
        self.std = std
        self.seed = int(seed)
        self.fitted = False
        self.register_buffer("weight", None)
        self.register_buffer("bias", None)
        if self.teacher_dim:
            self._allocate(self.teacher_dim)

    def _allocate(self, dim: int) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        std = self.std if self.std is not None else 1.0 / math.sqrt(dim)
        self.weight = torch.randn(self.num_hashes, dim, generator=gen) * std
        self.bias = torch.zeros(self.num_hashes)

    def hash_values(self, f: torch.Tensor) -> torch.Tensor:
        """``W f + b`` for a batch of (teacher-width) vectors, ``n x num_hashes``."""
        if self.weight is None:
            self._allocate(f.shape[1])
        if f.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"lsh projection expects width {self.weight.shape[1]}, got {f.shape[1]}"
            )
        return f @ self.weight.t().to(f) + self.bias.to(f)

    @torch.no_grad()
    def fit(self, teacher_codes: Any, teacher_features: Any | None = None) -> None:
        """Set the bias to minus the per-hash median of ``W f_t`` over the training set."""
        source = teacher_features if self.inputs == "features" else teacher_codes
        if source is None:
            raise ValueError("lsh was built with inputs='features': fit() needs teacher_features")
        f = as_sign_tensor(source)
        if self.weight is None:
            self._allocate(f.shape[1])
        self.bias.zero_()
        self.bias.copy_(-(f @ self.weight.t().to(f)).median(dim=0).values.to(self.bias))
        self.fitted = True

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch)
        ss, ts = zip(*self.pairs(batch), strict=True)
        s, t = torch.cat(ss), torch.cat(ts)
        target = (self.hash_values(t) > 0).to(s.dtype)
        l_lsh = F.binary_cross_entropy_with_logits(self.hash_values(s), target)
        return self.beta * (self.mse_weight * F.mse_loss(s, t) + l_lsh)
