"""BRCD: Bit-mask Robust Contrastive Knowledge Distillation for unsupervised semantic
hashing (He, Huang, Liu, Chen, Wang, Sha, Wang; WWW 2024; arXiv:2403.06071)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hashkd.clustering import DEFAULT_CANDIDATES, ClusterResult, cluster_teacher_codes
from hashkd.losses.base import DistillBatch, DistillLoss, as_sign_tensor, signs
from hashkd.losses.registry import register_loss

#: how a row's similarities are masked: with the anchor row's cluster mask on both vectors,
#: or each vector with the mask of its own image's cluster
MASK_MODES = ("anchor", "own")
EMPTY_MASK_ACTION = "kept all bits (an empty mask would erase the row)"


@register_loss("brcd")
class BRCDLoss(DistillLoss):
    """BRCD (Bit-mask Robust Contrastive KD, WWW 2024): contrastive KD between the
    student's and the teacher's code spaces, made robust with teacher-code clusters.

    Inputs: ``s1`` (student STE ±1 codes of view 1, with grad), ``t1``, ``t2`` (teacher
    codes of views 1 and 2, detached here), and the images' clusters (``batch.cluster``
    or ``batch.index`` into the labels set by :meth:`fit`/:meth:`set_clusters`). ``s2``
    is not used. tau = temperature, B = batch size, c(k) = cluster of image k. The paper
    distils codes; given both networks' pre-sign logits instead (``hashkd distill
    --kd-inputs logits``), the similarities are cosines of the logits while the clusters,
    their centres, the masks and the offset test stay statistics of the teacher's ±1 codes
    (the signs of its logits), so both inputs share one clustering.

    Contrastive KD (symmetric InfoNCE over 2B rows): ``Z = [s1; t2]``,
    ``S_ab = cos_a(Z_a, Z_b) / tau``; rows k and B+k share the positive
    ``pos_k = alpha_k cos(s1_k, t1_k)/tau + (1 - alpha_k) S_{k,B+k}`` (same-view
    "individual-space" term + cross-view "structural-semantic" term); the negatives of
    row a are the 2B-2 other entries (not a itself, not its partner);
    ``L = (1/2B) sum_a -log(e^{pos_a} / (e^{pos_a} + sum_{b in neg(a)} e^{S_ab + F_ab}))``.

    Switches (each independent, for the ablation):

    - ``use_cluster_filter``: ``F_ab = -inf`` when ``c(a) == c(b)`` — same-cluster pairs
      are removed from the denominator (a row's own positive is never touched; a row
      whose negatives are all removed has loss 0). Off: ``F = 0``.
    - ``use_offset_positive``: the teacher code of the augmented view ``t2_k`` is assigned
      to its nearest centre ``c'(k)``; if ``c'(k) != c(k)``, ``alpha_k = 1`` (the
      cross-view positive is dropped for that image). Off: ``alpha_k = alpha``.
    - ``use_bit_mask``: ``m_cj = 1[|mu_cj| > margin]`` (mu_c = mean ±1 teacher code of
      cluster c). ``mask_mode`` says which mask a similarity uses, for the cross-view
      positive and all negatives (the same-view term is never masked):

      * ``"anchor"`` (default): every similarity of row a is computed on the bits of the
        anchor's cluster, ``cos_a(x, y) = cos(m_{c(a)} * x, m_{c(a)} * y)``;
      * ``"own"``: each vector is masked with its own image's cluster,
        ``S_ab = cos(m_{c(a)} * Z_a, m_{c(b)} * Z_b)`` (symmetric).

      Rows k and B+k share c(k), so the cross-view positive is the same in both modes.
      A cluster agreeing on no bit keeps all its bits (an empty mask would erase the
      row); :meth:`report` says which clusters that happened to. Off: plain cosine.

    With all switches off and ``alpha = 0`` this is exactly NT-Xent between ``s1`` and
    ``t2`` (SimCLR's loss across the two code spaces). Gradients reach the student only.

    State: buffers ``cluster_labels`` (N), ``centres`` (k x K), ``masks`` (k x K), set by
    ``fit(teacher_codes)`` (runs :func:`hashkd.clustering.cluster_teacher_codes` with
    ``k``, ``k_candidates``, ``k_method``, ``seed``, ``teacher``) or by
    ``set_clusters(ClusterResult)``; ``clusters=`` accepts a result or a saved directory.
    A learned ``Linear(student_dim, teacher_dim)`` projection when code lengths differ.
    Defaults: alpha 0.5 (reference script 0.8), tau 0.3, margin 0.5 (reference; 0.1
    masks about 14% of the bits), mask_mode "anchor". Example:
    ``build_loss("brcd", alpha=0.5, k=10, teacher="runs/teacher")``.
    """

    needs_same_dim = True
    requires = ("t2",)
    default_weight_note = (
        "1: BRCD adds its term to the student's hashing loss unweighted; "
        "not re-tuned here, confirm by a validation sweep"
    )

    def __init__(
        self,
        alpha: float = 0.5,
        tau: float = 0.3,
        use_cluster_filter: bool = True,
        use_offset_positive: bool = True,
        use_bit_mask: bool = True,
        margin: float = 0.5,
        mask_mode: str = "anchor",
        k: int | None = None,
        k_candidates: Sequence[int] = DEFAULT_CANDIDATES,
        k_method: str = "silhouette",
        seed: int = 0,
        teacher: str | None = None,
        clusters: ClusterResult | str | os.PathLike[str] | None = None,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
    ) -> None:
        super().__init__(inputs="codes", student_dim=student_dim, teacher_dim=teacher_dim)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} is not valid: expected a number in [0, 1]")
        if tau <= 0:
            raise ValueError(f"tau={tau!r} is not valid: expected a positive temperature")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ValueError(f"margin={margin!r} is not valid: expected a number in [0, 1)")
        if mask_mode not in MASK_MODES:
            raise ValueError(
                f"mask_mode={mask_mode!r} is not valid: expected one of {', '.join(MASK_MODES)}"
            )
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.use_cluster_filter = bool(use_cluster_filter)
        self.use_offset_positive = bool(use_offset_positive)
        self.use_bit_mask = bool(use_bit_mask)
        self.margin = float(margin)
        self.mask_mode = mask_mode
        self.mask_report: dict[str, Any] = {}
        self.k = k
        self.k_candidates = tuple(k_candidates)
        self.k_method = k_method
        self.seed = int(seed)
        self.teacher = teacher
        self.clusters: ClusterResult | None = None
        self.register_buffer("cluster_labels", None)
        self.register_buffer("centres", None)
        self.register_buffer("masks", None)
        if clusters is not None:
            self.set_clusters(
                clusters if isinstance(clusters, ClusterResult) else ClusterResult.load(clusters)
            )

    @property
    def needs_clusters(self) -> bool:
        return self.use_cluster_filter or self.use_offset_positive or self.use_bit_mask

    # -- offline stage ------------------------------------------------------------------
    def fit(self, teacher_codes: Any, teacher_features: Any | None = None) -> None:
        """Cluster the teacher's training-set codes (row i = dataset index i); given its
        logits, their signs."""
        if not self.needs_clusters:
            return
        codes = signs(as_sign_tensor(teacher_codes)).numpy()
        result = cluster_teacher_codes(
            codes,
            teacher=self.teacher or "unknown",
            k=self.k,
            seed=self.seed,
            candidates=self.k_candidates,
            method=self.k_method,
        )
        self.set_clusters(result)

    def set_clusters(self, result: ClusterResult) -> None:
        """Use a clustering of the teacher's codes (checked against ``teacher`` if set)."""
        if self.teacher is not None and result.teacher != self.teacher:
            raise ValueError(
                f"clusters were computed for teacher {result.teacher!r}: expected teacher {self.teacher!r}"
            )
        self.clusters = result
        device = self.centres.device if self.centres is not None else torch.device("cpu")
        self.cluster_labels = torch.as_tensor(result.labels, dtype=torch.long, device=device)
        self.centres = torch.as_tensor(result.centres, dtype=torch.float32, device=device)
        rule = result.bit_mask(self.margin)
        empty = ~rule.any(axis=1)
        masks = torch.as_tensor(rule | empty[:, None], dtype=torch.float32, device=device)
        self.masks = masks  # a cluster that agrees on no bit keeps them all (reported)
        self.mask_report = self._mask_report(result, rule, empty)

    def _mask_report(
        self, result: ClusterResult, rule: np.ndarray, empty: np.ndarray
    ) -> dict[str, Any]:
        kept = result.kept_fraction(self.margin)
        sizes = result.sizes
        applied = (rule | empty[:, None]).mean(axis=1) if self.use_bit_mask else np.ones(result.k)
        return {
            "use_bit_mask": self.use_bit_mask,
            "mask_mode": self.mask_mode,
            "margin": self.margin,
            "k": result.k,
            "bits": result.bits,
            "cluster_sizes": sizes.tolist(),
            "kept_fraction": [round(float(f), 6) for f in kept],
            "mean_kept_fraction": float(kept.mean()),
            "image_weighted_kept_fraction": float((kept * sizes).sum() / max(int(sizes.sum()), 1)),
            "empty_mask_clusters": np.flatnonzero(empty).tolist(),
            "empty_mask_count": int(empty.sum()),
            "empty_mask_action": (
                "none"
                if not empty.any()
                else EMPTY_MASK_ACTION
                if self.use_bit_mask
                else "none (bit mask off)"
            ),
            "applied_mean_kept_fraction": float(applied.mean()),
        }

    def report(self) -> dict[str, Any]:
        """The bit masks at this margin: per-cluster kept fraction, means, empty masks."""
        return dict(self.mask_report)

    def log_fields(self) -> dict[str, float]:
        if not self.mask_report:
            return {}
        return {
            "mean_kept_fraction": round(self.mask_report["mean_kept_fraction"], 6),
            "empty_masks": self.mask_report["empty_mask_count"],
        }

    # -- pieces of the objective -----------------------------------------------------------
    def batch_clusters(self, batch: DistillBatch) -> torch.Tensor:
        """c(k) for every image of the batch (``batch.cluster``, else a lookup by index)."""
        if batch.cluster is not None:
            c = batch.cluster.long()
        else:
            if self.cluster_labels is None:
                raise ValueError(
                    "brcd has no clusters: call fit(teacher_codes) or set_clusters(), or pass batch.cluster"
                )
            if batch.index is None:
                raise ValueError(
                    "brcd needs batch.index (dataset indices) or batch.cluster to find the images' clusters"
                )
            index = batch.index.long().to(self.cluster_labels.device)
            if int(index.min()) < 0 or int(index.max()) >= self.cluster_labels.shape[0]:
                raise ValueError(
                    f"batch.index holds values outside [0, {self.cluster_labels.shape[0]}): expected training-set indices"
                )
            c = self.cluster_labels[index]
        if (self.use_offset_positive or self.use_bit_mask) and self.centres is None:
            raise ValueError(
                "brcd's offset positives and bit mask need cluster centres: call fit() or set_clusters()"
            )
        if self.centres is not None and (int(c.min()) < 0 or int(c.max()) >= self.centres.shape[0]):
            raise ValueError(
                f"cluster labels must lie in [0, {self.centres.shape[0]}), got {int(c.min())}..{int(c.max())}"
            )
        return c.to(batch.s1.device)

    def offset_mask(self, t2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """True where the augmented view's teacher code (the signs of ``t2``) is nearest
        another cluster's centre."""
        centres = self.centres.to(t2)
        nearest = torch.cdist(signs(t2.detach()), centres).argmin(dim=1)
        return nearest != c

    def similarity_matrix(self, batch: DistillBatch) -> torch.Tensor:
        """``S`` (2B x 2B): ``cos_a(Z_a, Z_b) / tau`` with ``Z = [s1; t2]`` (masked per anchor row)."""
        s1 = self.project(batch.s1, batch.t1.shape[1])
        c = self.batch_clusters(batch) if self.needs_clusters else None
        return self._similarities(s1, batch.t2.detach(), c)

    def _similarities(
        self, s1: torch.Tensor, t2: torch.Tensor, c: torch.Tensor | None
    ) -> torch.Tensor:
        z = torch.cat([s1, t2.to(s1)], dim=0)
        if self.use_bit_mask and self.mask_mode == "own":
            z = self.masks.to(z)[torch.cat([c, c])] * z  # each vector with its own cluster's bits
        if not self.use_bit_mask or self.mask_mode == "own":
            zn = F.normalize(z, dim=1, eps=1e-8)
            return zn @ zn.t() / self.tau
        w = self.masks.to(z)[torch.cat([c, c])] ** 2  # anchor row's mask, squared: cos(m*x, m*y)
        dot = (w * z) @ z.t()
        norm_anchor = (w * z * z).sum(dim=1).clamp(min=1e-12).sqrt()
        norm_other = (w @ (z * z).t()).clamp(min=1e-12).sqrt()
        return dot / (norm_anchor[:, None] * norm_other) / self.tau

    def row_losses(self, batch: DistillBatch) -> torch.Tensor:
        """The 2B per-row InfoNCE terms (rows 0..B-1 anchored on s1, B..2B-1 on t2)."""
        self.check_batch(batch, min_size=2)
        if batch.t1.shape != batch.t2.shape:
            raise ValueError(
                f"t1 {tuple(batch.t1.shape)} and t2 {tuple(batch.t2.shape)} must have the same shape"
            )
        bsz = batch.size
        s1 = self.project(batch.s1, batch.t1.shape[1])
        t1, t2 = batch.t1.detach().to(s1), batch.t2.detach().to(s1)
        c = self.batch_clusters(batch) if self.needs_clusters else None
        sim = self._similarities(s1, t2, c)

        alpha = torch.full((bsz,), self.alpha, dtype=s1.dtype, device=s1.device)
        if self.use_offset_positive:
            alpha = torch.where(self.offset_mask(t2, c), torch.ones_like(alpha), alpha)
        same_view = F.cosine_similarity(s1, t1, dim=1, eps=1e-8) / self.tau
        rows = torch.arange(bsz, device=s1.device)
        cross_view = sim[rows, rows + bsz]
        pos = alpha * same_view + (1.0 - alpha) * cross_view
        pos = torch.cat([pos, pos])

        eye = torch.eye(2 * bsz, dtype=torch.bool, device=s1.device)
        negatives = ~(eye | eye.roll(bsz, dims=1))  # not itself, not its partner view
        if self.use_cluster_filter:
            cc = torch.cat([c, c])
            negatives &= cc[:, None] != cc[None, :]
        logits = sim.masked_fill(~negatives, float("-inf"))
        denominator = torch.logsumexp(torch.cat([pos[:, None], logits], dim=1), dim=1)
        return denominator - pos

    def forward(self, batch: DistillBatch) -> torch.Tensor:
        return self.row_losses(batch).mean()
