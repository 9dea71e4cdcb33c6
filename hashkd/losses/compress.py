"""Similarity distillation over a memory of anchors: ISD (Tejankar et al., ICCV 2021)
in the fixed-teacher form of CompRess (Abbasi Koohpayegani et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hashkd.losses.base import DistillBatch, DistillLoss
from hashkd.losses.registry import register_loss


@register_loss("compress")
class CompressLoss(DistillLoss):
    """Similarity distillation over a FIFO memory of anchors (ISD / CompRess-2q).

    For L2-normalised student ``q`` and teacher ``k`` embeddings and two memory banks
    holding the student's (``M_s``) and the teacher's (``M_t``) embeddings of the same
    past images:
    ``p_t = softmax(k M_t^T / tau_t)``, ``p_s = softmax(q M_s^T / tau_s)``,
    ``L = KL(p_t || p_s)`` averaged over the batch. Soft similarities to the anchors are
    the signal: there is no hard positive/negative split. The views present are stacked
    into one batch. The batch is enqueued AFTER the loss is computed (FIFO, overwriting
    the oldest rows), and only in training mode; while the banks are still empty the
    loss is 0 (with a graph, so ``backward`` works).

    ``shared_bank=True`` is CompRess-1q: one teacher bank for both sides (needs equal
    widths, or ``student_dim``/``teacher_dim`` for a learned projection).

    State: buffers ``bank_s`` (memory_size x d_s), ``bank_t`` (memory_size x d_t), the
    write pointer and fill count; allocated on the first batch (or at construction when
    both dims are given). Defaults: memory 16384 (the papers use 128000 on GPUs),
    tau_s = tau_t = 0.04. Example: ``build_loss("compress", memory_size=4096)``.
    """

    def __init__(
        self,
        memory_size: int = 16384,
        tau_s: float = 0.04,
        tau_t: float = 0.04,
        shared_bank: bool = False,
        **kwargs,
    ) -> None:
        self.needs_same_dim = bool(shared_bank)  # instance override of the class flag
        super().__init__(**kwargs)
        if not isinstance(memory_size, int) or memory_size <= 0:
            raise ValueError(
                f"memory_size={memory_size!r} is not valid: expected a positive integer"
            )
        if tau_s <= 0 or tau_t <= 0:
            raise ValueError(
                f"temperatures tau_s={tau_s}, tau_t={tau_t} are not valid: expected positive numbers"
            )
        self.memory_size = memory_size
        self.tau_s = float(tau_s)
        self.tau_t = float(tau_t)
        self.shared_bank = bool(shared_bank)
        self.register_buffer("bank_s", None)
        self.register_buffer("bank_t", None)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        if self.teacher_dim:
            sdim = self.teacher_dim if self.shared_bank else self.student_dim
            if sdim:
                self._allocate(sdim, self.teacher_dim, torch.device("cpu"), torch.float32)

    def _allocate(self, d_s: int, d_t: int, device: torch.device, dtype: torch.dtype) -> None:
        self.bank_s = torch.zeros(self.memory_size, d_s, device=device, dtype=dtype)
        self.bank_t = torch.zeros(self.memory_size, d_t, device=device, dtype=dtype)

    def _stack(self, batch: DistillBatch) -> tuple[torch.Tensor, torch.Tensor]:
        ss, ts = zip(*self.pairs(batch), strict=True)
        return F.normalize(torch.cat(ss), dim=1), F.normalize(torch.cat(ts), dim=1)

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        self.check_batch(batch)
        q, k = self._stack(batch)
        if self.bank_t is None:
            self._allocate(q.shape[1], k.shape[1], k.device, k.dtype)
        if self.bank_s.shape[1] != q.shape[1] or self.bank_t.shape[1] != k.shape[1]:
            raise ValueError(
                f"compress memory holds widths {self.bank_s.shape[1]}/{self.bank_t.shape[1]}: "
                f"got student {q.shape[1]} and teacher {k.shape[1]}"
            )
        n = int(self.filled)
        if n == 0:
            loss = (q * 0.0).sum()
        else:
            anchors_t = self.bank_t[:n]
            # a copy: autograd keeps the anchors for backward, and the enqueue below writes
            # into the bank in place
            anchors_s = (anchors_t if self.shared_bank else self.bank_s[:n]).clone()
            log_p_t = F.log_softmax(k @ anchors_t.t() / self.tau_t, dim=1)
            log_p_s = F.log_softmax(q @ anchors_s.t() / self.tau_s, dim=1)
            loss = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        if self.training:
            self._enqueue(q.detach(), k)
        return loss

    @torch.no_grad()
    def _enqueue(self, q: torch.Tensor, k: torch.Tensor) -> None:
        # keep only the newest memory_size rows when one batch exceeds the memory
        q, k = q[-self.memory_size :], k[-self.memory_size :]
        rows = (int(self.ptr) + torch.arange(q.shape[0], device=q.device)) % self.memory_size
        self.bank_s[rows] = q.to(self.bank_s.dtype)
        self.bank_t[rows] = k.to(self.bank_t.dtype)
        self.ptr.fill_((int(self.ptr) + q.shape[0]) % self.memory_size)
        self.filled.fill_(min(self.memory_size, int(self.filled) + q.shape[0]))
