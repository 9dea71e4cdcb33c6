"""The one call signature every distillation loss shares: ``loss(batch) -> scalar``.

A :class:`DistillBatch` carries what the distillation trainer has at hand for one step:
the student's and the teacher's codes on two augmented views, optionally backbone
features, the dataset indices of the images and (for BRCD) their cluster labels.
Every loss is a :class:`DistillLoss`: an ``nn.Module`` whose ``forward`` takes the batch
and returns a scalar tensor, plus a ``fit`` hook called once before training with the
teacher's codes of the whole training set (row ``i`` = dataset index ``i``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hashkd.codes import codes_to_signs

INPUT_KINDS = ("codes", "features")


@dataclass
class DistillBatch:
    """Inputs of one distillation step (B images, two augmented views each).

    Attributes:
        s1, s2: student outputs for view 1 and view 2, ``B x K_s``, carrying gradients.
            The trainer passes the straight-through ±1 codes ``b`` of
            ``HashModel.hash_outputs`` (forward ±1, backward identity w.r.t. ``p``), as
            BRCD's reference does; every loss also accepts any real-valued relaxation
            (``p``, ``tanh(u)``). ``s2`` is optional for every loss but BRCD uses only ``s1``.
        t1, t2: teacher ±1 codes for the same two views, ``B x K_t`` (detached inside the
            losses; the teacher is frozen and in eval mode). ``t2`` is required by BRCD.
        s_feat, t_feat: optional backbone features of view 1 (``B x d_s``, ``B x d_t``),
            used by losses built with ``inputs="features"``.
        index: optional LongTensor ``(B,)`` of dataset indices (rows of the tensor given
            to :meth:`DistillLoss.fit`); needed by ``crd`` and by ``brcd`` cluster lookups.
        cluster: optional LongTensor ``(B,)`` of cluster labels; when given, ``brcd`` uses
            it instead of looking the labels up by ``index``.
    """

    s1: torch.Tensor
    t1: torch.Tensor
    s2: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    s_feat: torch.Tensor | None = None
    t_feat: torch.Tensor | None = None
    index: torch.Tensor | None = None
    cluster: torch.Tensor | None = None

    def __post_init__(self) -> None:
        batch = None
        for name in ("s1", "t1", "s2", "t2", "s_feat", "t_feat"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.ndim != 2:
                shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
                raise ValueError(
                    f"DistillBatch.{name} has shape {shape}: expected a 2-d tensor (B x dim)"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(
                    f"DistillBatch.{name} has {value.shape[0]} rows: expected {batch} like DistillBatch.s1"
                )
        for name in ("index", "cluster"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.shape[0] != batch:
                shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
                raise ValueError(
                    f"DistillBatch.{name} has shape {shape}: expected a 1-d tensor of {batch} integers"
                )
            if value.dtype.is_floating_point or value.dtype == torch.bool:
                raise ValueError(
                    f"DistillBatch.{name} has dtype {value.dtype}: expected integer indices"
                )

    @property
    def size(self) -> int:
        return int(self.s1.shape[0])


def signs(x: torch.Tensor) -> torch.Tensor:
    """±1 codes of real values such as logits (+1 where ``x > 0``, the rule of stored code bits);
    ±1 codes are returned unchanged, {0, 1} codes become ±1."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def as_sign_tensor(codes: Any) -> torch.Tensor:
    """Teacher codes for :meth:`DistillLoss.fit` as a float32 ``N x K`` tensor.

    Accepts packed uint8 codes (``N x K/8``, the layout of :mod:`hashkd.codes`) or any real ``N x K`` array
    or tensor (±1 codes, features).
    """
    if isinstance(codes, np.ndarray) and codes.dtype == np.uint8:
        codes = torch.from_numpy(codes_to_signs(codes))
    elif isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8:
        codes = torch.from_numpy(codes_to_signs(codes.cpu().numpy()))
    elif isinstance(codes, np.ndarray):
        codes = torch.from_numpy(np.asarray(codes, dtype=np.float32))
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        shape = tuple(codes.shape) if hasattr(codes, "shape") else type(codes).__name__
        raise ValueError(f"teacher codes have shape {shape}: expected a 2-d N x K array")
    return codes.detach().float()


class DistillLoss(nn.Module):
    """Base class of the registered distillation losses.

    Subclasses implement ``forward(batch: DistillBatch) -> Tensor`` (a scalar). Learned
    parts (projections, heads) are ``nn.Parameter``s the trainer must optimise together
    with the student: ``optimizer = Adam([*student.parameters(), *loss.parameters()])``.
    Fixed state (memory banks, random projections, cluster tables) lives in buffers, so
    ``loss.to(device)`` and ``loss.state_dict()`` carry it. Memory banks are only updated
    while the module is in training mode (``loss.train()``, the default).

    ``inputs`` selects which pair of tensors a loss reads: ``"codes"`` -> ``(s1, t1)``
    and, when both are given, ``(s2, t2)``; ``"features"`` -> ``(s_feat, t_feat)``.
    ``student_dim``/``teacher_dim`` are the widths of those tensors; when they differ and
    the loss compares the two spaces directly, it owns a learned ``Linear(student_dim,
    teacher_dim)`` projection of the student side (``self.proj``).
    """

    #: weight used in ``total = L_cib + sum_i w_i L_i`` when ``--loss-weights`` is not given
    #: (the table in docs/losses.md lists every loss's value and where it comes from)
    default_weight: ClassVar[float] = 1.0
    #: where ``default_weight`` comes from: the paper's value, or why there is none
    default_weight_note: ClassVar[str] = (
        "no value in the paper for this setting: choose it by a sweep on a validation split"
    )
    #: True when the loss compares student and teacher vectors coordinate-wise
    needs_same_dim: ClassVar[bool] = False
    #: DistillBatch fields the loss cannot do without (besides its input pair)
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, inputs: str = "codes", student_dim: int | None = None, teacher_dim: int | None = None
    ) -> None:
        super().__init__()
        if inputs not in INPUT_KINDS:
            raise ValueError(
                f"inputs={inputs!r} is not valid: expected one of {', '.join(INPUT_KINDS)}"
            )
        for name, dim in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if dim is not None and (not isinstance(dim, int) or dim <= 0):
                raise ValueError(f"{name}={dim!r} is not valid: expected a positive integer")
        self.inputs = inputs
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.proj: nn.Module | None = None
        if self.needs_same_dim and student_dim and teacher_dim and student_dim != teacher_dim:
            self.proj = nn.Linear(student_dim, teacher_dim)

    # -- setup hook -------------------------------------------------------------------
    def fit(self, teacher_codes: Any, teacher_features: Any | None = None) -> None:
        """Prepare state that depends on the training set (default: nothing to do).

        ``teacher_codes``: the teacher's codes of the whole training set, ``N x K`` ±1
        (or packed uint8 ``N x K/8``), row ``i`` for dataset index ``i``;
        ``teacher_features``: optional ``N x d_t`` backbone features in the same order.
        """

    def report(self) -> dict[str, Any]:
        """JSON-ready facts about the state :meth:`fit` set up, for the run's metadata
        (default: nothing to report; BRCD reports its bit masks)."""
        return {}

    def log_fields(self) -> dict[str, float]:
        """A few scalars of :meth:`report` worth repeating in every epoch's log record."""
        return {}

    # -- helpers for subclasses ---------------------------------------------------------
    def pairs(self, batch: DistillBatch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the (student, detached teacher) pairs this loss reads, projected if needed."""
        if self.inputs == "features":
            if batch.s_feat is None or batch.t_feat is None:
                raise ValueError(
                    f"loss {type(self).__name__} was built with inputs='features' but the batch has no s_feat/t_feat"
                )
            views = [(batch.s_feat, batch.t_feat)]
        else:
            views = [(batch.s1, batch.t1)]
            if batch.s2 is not None and batch.t2 is not None:
                views.append((batch.s2, batch.t2))
        for s, t in views:
            yield self.project(s, t.shape[1]), t.detach()

    def project(self, s: torch.Tensor, teacher_dim: int) -> torch.Tensor:
        """Map student vectors to the teacher's width when this loss needs equal widths."""
        if self.proj is not None:
            if s.shape[1] != self.student_dim:
                raise ValueError(
                    f"{type(self).__name__} got student vectors of width {s.shape[1]}: expected student_dim={self.student_dim}"
                )
            s = self.proj(s)
        if self.needs_same_dim and s.shape[1] != teacher_dim:
            raise ValueError(
                f"{type(self).__name__} got student width {s.shape[1]} and teacher width {teacher_dim}: "
                "pass student_dim and teacher_dim to build a learned projection"
            )
        return s

    def check_batch(self, batch: DistillBatch, min_size: int = 1) -> None:
        if batch.size < min_size:
            raise ValueError(
                f"{type(self).__name__} got a batch of {batch.size}: expected at least {min_size} samples"
            )
        for name in self.requires:
            if getattr(batch, name) is None:
                raise ValueError(
                    f"{type(self).__name__} needs DistillBatch.{name}, which is missing"
                )
