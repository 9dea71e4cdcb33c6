"""Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


class _Embed(nn.Module):
    """Linear(d, feat_dim) followed by L2 normalisation (CRD's projection head)."""

    def __init__(self, dim: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x), p=2, dim=1)


@register_loss("crd")
class CRDLoss(DistillLoss):
    """Contrastive Representation Distillation (Tian et al., ICLR 2020), NCE form of the
    authors' code (RepDistiller ``CRDLoss``/``ContrastMemory``).

    Heads ``e_s = normalize(Linear(d_s, 128)(f_s))``, ``e_t = normalize(Linear(d_t,
    128)(f_t))``. Two dataset-sized memory banks: ``mem_s`` (student embeddings) and
    ``mem_t`` (teacher embeddings), one row per dataset index. For sample i with ``N``
    negatives j drawn uniformly among the other indices, scores
    ``h(e, m) = exp(<e, m>/tau) / Z`` (Z fixed on the first batch as mean score x n_data)
    and, with ``P_n = 1/n_data``,
    ``L_nce = -[log(h_pos/(h_pos + N P_n)) + sum_j log(N P_n/(h_j + N P_n))]`` per sample
    (batch mean); ``L = L_nce(e_s vs mem_t) + L_nce(e_t vs mem_s)``. After the loss, in
    training mode, ``mem[i] <- normalize(momentum * mem[i] + (1 - momentum) * e_i)``
    (momentum 0.5): every memory row stays unit-norm.

    Needs ``batch.index`` (dataset indices). Reads view 1 only (one memory row per
    image). State: parameters of both heads (``loss.parameters()``, train them with the
    student), buffers ``mem_s``, ``mem_t`` (n_data x 128, unit-norm random at start),
    ``z_s``, ``z_t``. ``n_data`` comes from the constructor or from ``fit(teacher_codes)``
    (its number of rows). ``student_dim``/``teacher_dim`` are required (head widths).
    Defaults: tau 0.07, 500 negatives (a hashing paper's value; the CRD paper uses 16384).
    Example: ``build_loss("crd", student_dim=64, teacher_dim=64, n_data=50000)``.
    """

    requires = ("index",)
    default_weight = 0.8
    default_weight_note = "Tian et al. 2020: beta = 0.8 for the CRD term"

    def __init__(
        self,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        n_data: int | None = None,
        feat_dim: int = 128,
        num_negatives: int = 500,
        tau: float = 0.07,
        momentum: float = 0.5,
        seed: int = 0,
        inputs: str = "codes",
    ) -> None:
        super().__init__(inputs=inputs, student_dim=student_dim, teacher_dim=teacher_dim)
        if student_dim is None or teacher_dim is None:
            raise ValueError(
                "crd needs student_dim and teacher_dim (the widths of its projection heads)"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} is not valid: expected a number in [0, 1)")
        if tau <= 0 or num_negatives <= 0 or feat_dim <= 0:
            raise ValueError(
                f"crd options tau={tau}, num_negatives={num_negatives}, feat_dim={feat_dim} are not valid: expected positive values"
            )
        self.embed_s = _Embed(student_dim, feat_dim)
        self.embed_t = _Embed(teacher_dim, feat_dim)
        self.feat_dim = feat_dim
        self.num_negatives = int(num_negatives)
        self.tau = float(tau)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None
        self.register_buffer("mem_s", None)
        self.register_buffer("mem_t", None)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        if n_data is not None:
            self._allocate(n_data)

    @property
    def n_data(self) -> int:
        return 0 if self.mem_s is None else int(self.mem_s.shape[0])

    def _allocate(self, n_data: int) -> None:
        if not isinstance(n_data, int) or n_data < 2:
            raise ValueError(
                f"n_data={n_data!r} is not valid: expected the training-set size (at least 2)"
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.mem_s = F.normalize(torch.rand(n_data, self.feat_dim, generator=gen) * 2 - 1, dim=1)
        self.mem_t = F.normalize(torch.rand(n_data, self.feat_dim, generator=gen) * 2 - 1, dim=1)
        self.z_s.fill_(-1.0)
        self.z_t.fill_(-1.0)

    def fit(self, teacher_codes: Any, teacher_features: Any | None = None) -> None:
        """Allocate both memory banks for the training set (one row per dataset index)."""
        self._allocate(int(len(teacher_codes)))

    def _negatives(self, index: torch.Tensor) -> torch.Tensor:
        """B x N indices drawn uniformly among the dataset indices other than the sample's."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed + 1)
        n = min(self.num_negatives, self.n_data - 1)
        offset = torch.randint(1, self.n_data, (index.shape[0], n), generator=self._gen)
        return (index.cpu()[:, None] + offset) % self.n_data

    def _nce(
        self, e: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """NCE loss of embeddings ``e`` against memory rows ``idx`` (column 0 = positive)."""
        scores = torch.exp(torch.einsum("bnd,bd->bn", memory[idx], e) / self.tau)
        if z < 0:  # the normalisation constant is fixed on the first batch, as in CRD
            z.fill_(float(scores.detach().mean()) * self.n_data)
        scores = scores / z
        m_pn = (scores.shape[1] - 1) / self.n_data
        eps = 1e-7
        log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + m_pn + eps))
        log_d0 = torch.log(m_pn / (scores[:, 1:] + m_pn + eps))
        return -(log_d1.sum() + log_d0.sum()) / e.shape[0]

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch)
        if self.mem_s is None:
            raise ValueError(
                "crd has no memory banks: pass n_data or call fit(teacher_codes) before training"
            )
        index = batch.index.long()
        if int(index.min()) < 0 or int(index.max()) >= self.n_data:
            raise ValueError(
                f"batch.index holds values outside [0, {self.n_data}): expected dataset indices"
            )
        s, t = next(iter(self.pairs(batch)))
        e_s, e_t = self.embed_s(s), self.embed_t(t)
        idx = torch.cat([index.cpu()[:, None], self._negatives(index)], dim=1).to(self.mem_s.device)
        loss = self._nce(e_s, self.mem_t, idx, self.z_s) + self._nce(e_t, self.mem_s, idx, self.z_t)
        if self.training:
            self._update(index.to(self.mem_s.device), e_s.detach(), e_t.detach())
        return loss

    @torch.no_grad()
    def _update(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        for memory, e in ((self.mem_s, e_s), (self.mem_t, e_t)):
            mixed = memory[index] * self.momentum + e.to(memory) * (1.0 - self.momentum)
            memory[index] = F.normalize(mixed, p=2, dim=1)

    def extra_repr(self) -> str:
        return f"n_data={self.n_data}, feat_dim={self.feat_dim}, negatives={self.num_negatives}, tau={self.tau}"
