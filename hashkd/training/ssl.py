"""Self-supervised methods of ``hashkd pretrain``: SimCLR and MoCo v3, their losses and views.

* ``simclr`` -- SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020): two augmented views,
  backbone -> projection MLP ``g`` (Linear-BN-ReLU-Linear) -> ``z``, NT-Xent loss

      l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)

  over the 2N views of the batch (under torchrun the negatives of every process are
  gathered with a differentiable all-gather, so the loss sees the global batch).
* ``mocov3`` -- MoCo v3 (Chen, Xie, He, ICCV 2021; the recipe recommended for ViTs):
  a query encoder (backbone, 3-layer projector, 2-layer predictor) and a momentum encoder
  (EMA of backbone and projector, momentum ``m`` rising to 1 on a cosine schedule), loss
  ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = 2 tau * CE(q k^T / tau, diag)``; keys are
  gathered from every process.

Augmentation is the SimCLR CIFAR one, stronger than the hashing views: RandomResizedCrop
scale (0.2, 1), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2,
no blur at 32 px (SimCLR appendix B.9).

kNN accuracy (:func:`knn_accuracy`) is the usual sanity figure of SSL features (weighted k-NN of
Wu et al., CVPR 2018, as used by DINO): cosine similarity, the k nearest training images vote
with weight ``exp(s / 0.07)``.

Each method is an ``nn.Module`` whose ``forward(x1, x2)`` returns the loss of two batches of
views and whose attribute ``backbone`` is the network being pretrained. The attribute names
are the keys of the pretraining checkpoint's ``model`` state dict: renaming them breaks
``--resume`` of existing checkpoints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hashkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from hashkd.training.common import Split
from hashkd.training.views import EvalDataset

# --------------------------------------------------------------------------- views


def ssl_transform(
    img_size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> Callable[[Any], torch.Tensor]:
    """SimCLR's CIFAR augmentation (module docstring); the normalisation of the hash models."""
    return train_transform(
        img_size,
        mean,
        std,
        crop_scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=0.0,
    )


class TwoViews(Dataset):
    """Two independently augmented views of each image ``indices[i]`` of ``source``."""

    def __init__(self, source: Any, indices: np.ndarray, transform: Callable[[Any], torch.Tensor]):
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.source.load_image(int(self.indices[i]))
        return self.transform(img), self.transform(img)


# --------------------------------------------------------------------------- heads and gathering


def mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 2, last_bn: bool = False
) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a Linear (the SimCLR / MoCo v3 projector and predictor)."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient and returns this process's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank() * ctx.n : (dist.get_rank() + 1) * ctx.n]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """The rows of ``x`` of every process, in rank order (``x`` itself with one process)."""
    if not _distributed():
        return x
    if differentiable:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# --------------------------------------------------------------------------- losses


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent of SimCLR over the global batch: each local view against all 2 W N views but itself.

    With one process this is exactly :func:`hashkd.training.cibhash.nt_xent`.
    """
    n = z1.shape[0]
    q = F.normalize(torch.cat([z1, z2]), dim=1)  # local rows, 2n
    a1 = F.normalize(gather(z1, True), dim=1)
    a2 = F.normalize(gather(z2, True), dim=1)
    keys = torch.cat([a1, a2])  # 2 W n
    big = a1.shape[0]
    sim = q @ keys.t() / tau
    own = torch.arange(n, device=q.device) + _rank() * n
    self_cols = torch.cat([own, own + big])
    partner = torch.cat([own + big, own])
    sim[torch.arange(2 * n, device=q.device), self_cols] = float("-inf")
    return F.cross_entropy(sim, partner)


def moco_contrastive(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v3's ``ctr(q, k) = 2 tau * CE(q k^T / tau, positives on the diagonal)`` with gathered keys."""
    q = F.normalize(q, dim=1)
    k = F.normalize(gather(k.detach(), False), dim=1)
    labels = torch.arange(q.shape[0], device=q.device) + _rank() * q.shape[0]
    return F.cross_entropy(q @ k.t() / tau, labels) * (2 * tau)


def momentum_at(step: int, total: int, base: float) -> float:
    """MoCo v3 / BYOL momentum schedule: ``1 - (1 - m0)(cos(pi t / T) + 1) / 2``."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(1.0, step / max(1, total))) + 1.0) / 2.0


# --------------------------------------------------------------------------- methods


class SimCLR(nn.Module):
    """Backbone + projection MLP; ``forward(x1, x2)`` returns the NT-Xent loss."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden: int, out_dim: int, tau: float):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(feat_dim, hidden, out_dim, layers=2)
        self.tau = tau

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.backbone(torch.cat([x1, x2])))
        z1, z2 = z.chunk(2)
        return simclr_loss(z1, z2, self.tau)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step."""


class MoCoV3(nn.Module):
    """Query encoder (backbone, projector, predictor) and a momentum encoder (EMA)."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        hidden: int,
        out_dim: int,
        tau: float,
        momentum: float = 0.99,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(feat_dim, hidden, out_dim, layers=3, last_bn=True)
        self.predictor = mlp(out_dim, hidden, out_dim, layers=2, last_bn=True)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_backbone.parameters()) + list(
            self.momentum_projector.parameters()
        ):
            p.requires_grad_(False)
        self.tau = tau
        self.base_momentum = momentum

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        for online, ema in (
            (self.backbone, self.momentum_backbone),
            (self.projector, self.momentum_projector),
        ):
            for p, q in zip(online.parameters(), ema.parameters(), strict=True):
                q.mul_(m).add_(p.detach(), alpha=1 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x1, x2])
        q1, q2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_backbone(x)).chunk(2)
        return moco_contrastive(q1, k2, self.tau) + moco_contrastive(q2, k1, self.tau)

    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the momentum encoder after optimiser step ``step`` (0-based)."""
        self.update_momentum(momentum_at(step, total_steps, self.base_momentum))


#: The methods by ``--method`` name (the same names as the CLI's import-light ``PRETRAIN_METHODS``).
SSL_METHODS: dict[str, type[SimCLR] | type[MoCoV3]] = {"simclr": SimCLR, "mocov3": MoCoV3}


def ssl_model(
    method: str,
    backbone: nn.Module,
    feat_dim: int,
    *,
    hidden: int,
    out_dim: int,
    tau: float,
    momentum: float,
) -> SimCLR | MoCoV3:
    """The ``method`` module around ``backbone`` (whose features have ``feat_dim`` values)."""
    if method not in SSL_METHODS:
        raise ValueError(
            f"method={method!r} is not valid: expected one of {', '.join(SSL_METHODS)}"
        )
    if method == "mocov3":
        return MoCoV3(backbone, feat_dim, hidden, out_dim, tau, momentum)
    return SimCLR(backbone, feat_dim, hidden, out_dim, tau)


# --------------------------------------------------------------------------- kNN sanity figure


def knn_accuracy(
    train_f: np.ndarray,
    train_y: np.ndarray,
    test_f: np.ndarray,
    test_y: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of the weighted cosine k-NN classifier (Wu et al. 2018; DINO's eval_knn)."""
    tr = F.normalize(torch.as_tensor(train_f, dtype=torch.float32), dim=1)
    te = F.normalize(torch.as_tensor(test_f, dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    c = int(num_classes or (max(int(ytr.max()), int(np.max(test_y))) + 1))
    k = min(k, tr.shape[0])
    correct = 0
    for s in range(0, te.shape[0], 1024):
        sim = te[s : s + 1024] @ tr.t()
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], c).scatter_add_(1, ytr[idx], (top / temperature).exp())
        correct += int((votes.argmax(1).numpy() == np.asarray(test_y[s : s + 1024])).sum())
    return correct / max(1, te.shape[0])


@torch.no_grad()
def backbone_features(
    backbone: nn.Module,
    split: Split,
    transform: Callable[[Any], torch.Tensor],
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """The backbone's features of every image of ``split`` under the deterministic ``transform``."""
    was = backbone.training
    backbone.eval()
    loader = DataLoader(EvalDataset(split.source, split.indices, transform), batch_size=batch_size)
    out = np.concatenate([backbone(x.to(device)).float().cpu().numpy() for x, _ in loader])
    backbone.train(was)
    return out


__all__ = [
    "SSL_METHODS",
    "MoCoV3",
    "SimCLR",
    "TwoViews",
    "backbone_features",
    "gather",
    "knn_accuracy",
    "mlp",
    "moco_contrastive",
    "momentum_at",
    "simclr_loss",
    "ssl_model",
    "ssl_transform",
]
