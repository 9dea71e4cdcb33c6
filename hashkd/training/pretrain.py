"""Self-supervised pretraining of a timm backbone on unlabeled images (``hashkd pretrain``).

The teacher of the reference setting is a frozen, large-scale pretrained ViT with only a
linear hash head trained. A user without pretrained weights for their domain gets such a
backbone from their own unlabeled images with one of two methods:

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
no blur at 32 px (SimCLR appendix B.9). Optimiser: AdamW with linear warm-up and a cosine
decay per step.

Outputs, for ``out = WEIGHTS.safetensors``:

* ``WEIGHTS.safetensors`` -- the BACKBONE state dict only, with timm's own key names, so
  :func:`hashkd.models.build_model` (``--weights``) loads it;
* ``WEIGHTS.safetensors.json`` -- its description: backbone, backbone_kwargs, img_size,
  method, epochs, data, seed, hashkd version (read by ``build_model``);
* ``WEIGHTS.safetensors.ckpt.pt`` -- the resumable checkpoint (tensors and plain values only,
  read back with ``torch.load(weights_only=True)``);
* ``WEIGHTS.safetensors.log.jsonl`` -- one JSON object per epoch (and per mid-epoch checkpoint).

kNN accuracy (``knn_eval``) is the usual sanity figure of SSL features (weighted k-NN of
Wu et al., CVPR 2018, as used by DINO): cosine similarity, the k nearest training images vote
with weight ``exp(s / 0.07)``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hashkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from hashkd.training import PRETRAIN_METHODS as METHODS
from hashkd.training.common import Split, Timer, seed_everything
from hashkd.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
)


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (kept in the checkpoint and the weights' JSON)."""

    out: str
    data: str = "digits"
    root: str | None = None
    group: str | None = None
    backbone: str = "vit_tiny_patch16_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int = 32
    method: str = "simclr"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    tau: float = 0.2
    proj_dim: int = 128
    proj_hidden: int = 512
    momentum: float = 0.99
    max_images: int | None = None
    seed: int = 0
    knn_eval: bool = False
    knn_every: int = 0
    knn_k: int = 20
    protocol: str | None = None
    checkpoint_every: int = 0
    keep_every: int = 0
    time_limit_min: float | None = None
    num_workers: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not str(self.out).endswith(".safetensors"):
            raise ValueError(
                f"--out {self.out!r} is not valid: expected a weights file name ending in .safetensors"
            )
        if self.method not in METHODS:
            raise ValueError(
                f"method={self.method!r} is not valid: expected one of {', '.join(METHODS)}"
            )
        for name in ("epochs", "batch_size", "proj_dim", "proj_hidden", "knn_k", "img_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(
                    f"{name.replace('_', '-')}={getattr(self, name)} is not valid: expected a positive integer"
                )
        if self.batch_size < 2:
            raise ValueError(
                f"batch-size={self.batch_size} is not valid: contrastive learning needs at least 2 images"
            )
        for name in ("knn_every", "checkpoint_every", "keep_every", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(
                    f"{name.replace('_', '-')}={getattr(self, name)} is not valid: expected 0 or more"
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr} is not valid: expected a positive learning rate")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau={self.tau} is not valid: expected a positive temperature")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum} is not valid: expected a value in [0, 1)")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(
                f"weight-decay={self.weight_decay} / warmup-epochs={self.warmup_epochs} are not valid: "
                "expected values >= 0"
            )
        if self.max_images is not None and self.max_images < 2:
            raise ValueError(
                f"max-images={self.max_images} is not valid: expected at least 2 images"
            )
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise ValueError(
                f"time-limit={self.time_limit_min} is not valid: expected a positive number of minutes"
            )


def side_paths(out: str | Path) -> dict[str, Path]:
    """The files written next to the weights file ``out``."""
    out = Path(out)
    return {
        "weights": out,
        "json": Path(f"{out}.json"),
        "checkpoint": Path(f"{out}.ckpt.pt"),
        "log": Path(f"{out}.log.jsonl"),
    }


def snapshot_path(out: str | Path, epoch: int) -> Path:
    """Where ``--keep-every`` keeps the weights after ``epoch``: ``OUT`` with ``-epochNNN`` before ``.safetensors``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-epoch{int(epoch):03d}{out.suffix}")


# --------------------------------------------------------------------------- augmentations


def ssl_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
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


class _TwoViews(Dataset):
    def __init__(self, source, indices: np.ndarray, transform):
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = self.source.load_image(int(self.indices[i]))
        return self.transform(img), self.transform(img)


# --------------------------------------------------------------------------- heads and losses


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


def _gather(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if differentiable:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent of SimCLR over the global batch: each local view against all 2 W N views but itself.

    With one process this is exactly :func:`hashkd.training.cibhash.nt_xent`.
    """
    n = z1.shape[0]
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    q = F.normalize(torch.cat([z1, z2]), dim=1)  # local rows, 2n
    a1 = F.normalize(_gather(z1, True), dim=1)
    a2 = F.normalize(_gather(z2, True), dim=1)
    keys = torch.cat([a1, a2])  # 2 W n
    big = a1.shape[0]
    sim = q @ keys.t() / tau
    own = torch.arange(n, device=q.device) + rank * n
    self_cols = torch.cat([own, own + big])
    partner = torch.cat([own + big, own])
    sim[torch.arange(2 * n, device=q.device), self_cols] = float("-inf")
    return F.cross_entropy(sim, partner)


def moco_contrastive(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v3's ``ctr(q, k) = 2 tau * CE(q k^T / tau, positives on the diagonal)`` with gathered keys."""
    q = F.normalize(q, dim=1)
    k = F.normalize(_gather(k.detach(), False), dim=1)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(q @ k.t() / tau, labels) * (2 * tau)


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


class MoCoV3(nn.Module):
    """Query encoder (backbone, projector, predictor) and a momentum encoder (EMA)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden: int, out_dim: int, tau: float):
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


def build_ssl_model(cfg: PretrainConfig) -> tuple[nn.Module, nn.Module]:
    """``(ssl_model, backbone)`` for ``cfg`` (the backbone is built exactly as the hash models build it)."""
    from hashkd.models import ModelConfig, build_model

    mcfg = ModelConfig(
        backbone=cfg.backbone,
        bits=8,
        img_size=cfg.img_size,
        backbone_kwargs=dict(cfg.backbone_kwargs),
    )
    hm = build_model(mcfg)
    backbone, dim = hm.backbone, hm.feature_dim
    cls = SimCLR if cfg.method == "simclr" else MoCoV3
    return cls(backbone, dim, cfg.proj_hidden, cfg.proj_dim, cfg.tau), backbone


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def momentum_at(step: int, total: int, base: float) -> float:
    """MoCo v3 / BYOL momentum schedule: ``1 - (1 - m0)(cos(pi t / T) + 1) / 2``."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(1.0, step / max(1, total))) + 1.0) / 2.0


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
    backbone: nn.Module, split: Split, transform, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    from hashkd.training.views import EvalDataset

    was = backbone.training
    backbone.eval()
    loader = DataLoader(EvalDataset(split.source, split.indices, transform), batch_size=batch_size)
    out = np.concatenate([backbone(x.to(device)).float().cpu().numpy() for x, _ in loader])
    backbone.train(was)
    return out


def knn_eval(backbone: nn.Module, cfg: PretrainConfig, device: torch.device) -> dict[str, float]:
    """kNN accuracy: the protocol's labeled training split votes for its query split."""
    from hashkd.data.splits import primary_class
    from hashkd.training.data_setup import prepare_data

    data = prepare_data(cfg.data, cfg.root, cfg.protocol, cfg.seed)
    tf = eval_transform(cfg.img_size, IMAGENET_MEAN, IMAGENET_STD)
    ftr = backbone_features(backbone, data.train, tf, device)
    fte = backbone_features(backbone, data.query, tf, device)
    ytr, yte = primary_class(data.train.labels), primary_class(data.query.labels)
    return {
        "knn_acc": knn_accuracy(ftr, ytr, fte, yte, k=cfg.knn_k),
        "knn_train": len(ytr),
        "knn_query": len(yte),
    }


# --------------------------------------------------------------------------- files


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_backbone(backbone: nn.Module, cfg: PretrainConfig, extra: dict[str, Any]) -> None:
    """Write the backbone's state dict (safetensors) and its JSON description."""
    from safetensors.torch import save_file

    import hashkd

    paths = side_paths(cfg.out)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    _atomic(
        paths["weights"],
        lambda tmp: save_file(state, tmp, metadata={"format": "pt", "method": cfg.method}),
    )
    desc = {
        "backbone": cfg.backbone,
        "backbone_kwargs": cfg.backbone_kwargs,
        "img_size": cfg.img_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "method": cfg.method,
        "epochs": cfg.epochs,
        "data": cfg.data,
        "group": cfg.group,
        "seed": cfg.seed,
        "hashkd_version": getattr(hashkd, "__version__", None),
        "config": asdict(cfg),
        **extra,
    }
    _atomic(
        paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(desc, indent=2, sort_keys=True))
    )


def _log(cfg: PretrainConfig, record: dict[str, Any]) -> None:
    with open(side_paths(cfg.out)["log"], "a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **record}, sort_keys=True) + "\n")


def read_log(out: str | Path) -> list[dict[str, Any]]:
    p = side_paths(out)["log"]
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


# --------------------------------------------------------------------------- data


def pretrain_pool(cfg: PretrainConfig):
    """``(dataset, indices)`` of the unlabeled images to pretrain on.

    ``group`` picks a named part (e.g. CIFAR-10's ``train``); a data set with a ``train`` group
    uses it by default so that test images are never seen. ``max_images`` keeps a seeded subset.
    """
    from hashkd.data import load_dataset

    ds = load_dataset(cfg.data, root=cfg.root)
    groups = getattr(ds, "groups", None) or {}
    group = cfg.group or ("train" if "train" in groups else None)
    if group is not None:
        if group not in groups:
            raise ValueError(
                f"group={group!r} is not a part of {cfg.data!r}: expected one of {', '.join(groups) or '(none)'}"
            )
        idx = np.asarray(groups[group], dtype=np.int64)
    else:
        idx = np.arange(len(ds), dtype=np.int64)
    if cfg.max_images is not None and cfg.max_images < len(idx):
        rng = np.random.default_rng(cfg.seed)
        idx = np.sort(rng.choice(idx, size=cfg.max_images, replace=False))
    cfg.group = group
    return ds, idx


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of ``epoch`` (a function of seed and epoch only, so resume is exact)."""
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


# --------------------------------------------------------------------------- the loop


def pretrain(cfg: PretrainConfig) -> Path:
    """Run self-supervised pretraining; returns the weights path."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, info)
    finally:
        cleanup(info)


def _pretrain(cfg: PretrainConfig, info: DistInfo) -> Path:
    paths = side_paths(cfg.out)
    if info.is_main:
        paths["weights"].parent.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + info.rank)
    ds, pool = pretrain_pool(cfg)
    world_batch = cfg.batch_size * info.world_size
    if len(pool) < world_batch:
        raise ValueError(
            f"batch-size={cfg.batch_size} x {info.world_size} processes is more than the "
            f"{len(pool)} images of {cfg.data!r}: expected a smaller batch"
        )
    steps_per_epoch = (
        len(pool) // world_batch
    )  # drop_last: every process sees the same number of steps
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, backbone = build_ssl_model(cfg)
    model.to(info.device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    step, elapsed_before = 0, 0.0
    if cfg.resume:
        if not paths["checkpoint"].is_file():
            raise ValueError(
                f"--resume was given but {str(paths['checkpoint'])!r} does not exist: expected the "
                "checkpoint of an earlier run with the same --out"
            )
        state = torch.load(paths["checkpoint"], map_location="cpu", weights_only=True)
        if state["config"]["backbone"] != cfg.backbone or state["config"]["method"] != cfg.method:
            raise ValueError(
                f"--resume: the checkpoint is for {state['config']['backbone']!r} / "
                f"{state['config']['method']!r}, not {cfg.backbone!r} / {cfg.method!r}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        if "rng" in state and not info.enabled:
            torch.set_rng_state(state["rng"])  # the augmentation stream continues where it stopped
        else:  # one process's RNG state is saved: each rank draws a fresh stream
            torch.manual_seed(cfg.seed * 1_000_003 + info.rank * 7_919 + step)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(
                f"--resume: the checkpoint has {state['steps_per_epoch']} steps per epoch, this run "
                f"{steps_per_epoch}: expected the same data, batch size and process count"
            )
        if step >= total_steps:
            if info.is_main:
                print(f"pretraining in {cfg.out} already finished {step // steps_per_epoch} epochs")
            return paths["weights"]
    ddp = DDP(model) if info.enabled else model
    transform = ssl_transform(cfg.img_size)
    timer = Timer()

    def checkpoint(epoch_done: bool) -> None:
        if not info.is_main:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "steps_per_epoch": steps_per_epoch,
            "elapsed_s": elapsed_before + timer.elapsed(),
            "rng": torch.get_rng_state(),
            "config": {"backbone": cfg.backbone, "method": cfg.method},
        }
        _atomic(paths["checkpoint"], lambda tmp: torch.save(state, tmp))
        save_backbone(
            backbone,
            cfg,
            {"steps": step, "epochs_done": step / steps_per_epoch, "pool_images": int(len(pool))},
        )

    stop = False
    while step < total_steps and not stop:
        epoch = step // steps_per_epoch
        start = (step % steps_per_epoch) * world_batch
        order = epoch_order(len(pool), cfg.seed, epoch)[: steps_per_epoch * world_batch]
        mine = order[start:].view(-1, info.world_size, cfg.batch_size)[:, info.rank].reshape(-1)
        loader = DataLoader(
            _TwoViews(ds, pool[mine.numpy()], transform),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )  # keeps the global RNG
        # for the augmentations alone, so that a resumed run draws exactly the views of an uninterrupted one
        model.train()
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and info.is_main),
            initial=step % steps_per_epoch,
            total=steps_per_epoch,
        )
        for x1, x2 in bar:
            lr = lr_at(step, total_steps, warmup, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = ddp(x1.to(info.device), x2.to(info.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if isinstance(model, MoCoV3):
                model.update_momentum(momentum_at(step, total_steps, cfg.momentum))
            step += 1
            total += float(loss.item())
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            over = cfg.time_limit_min is not None and timer.elapsed() > 60 * cfg.time_limit_min
            if info.enabled:  # every rank stops at the same step
                flag = torch.tensor([1.0 if over else 0.0])
                dist.all_reduce(flag)
                over = flag.item() > 0
            if over:
                stop = True
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                checkpoint(False)
                if info.is_main:
                    _log(
                        cfg,
                        {
                            "event": "checkpoint",
                            "step": step,
                            "epoch_float": round(step / steps_per_epoch, 4),
                            "loss": total / max(1, count),
                            "elapsed_s": round(elapsed_before + timer.elapsed(), 2),
                        },
                    )
        loss_mean = all_reduce_mean(total / max(count, 1), info)
        record: dict[str, Any] = {
            "event": "epoch" if step % steps_per_epoch == 0 else "stopped",
            "epoch": step // steps_per_epoch if step % steps_per_epoch == 0 else None,
            "epoch_float": round(step / steps_per_epoch, 4),
            "step": step,
            "loss": loss_mean,
            "lr": lr,
            "images_seen": step * world_batch,
            "elapsed_s": round(elapsed_before + timer.elapsed(), 2),
        }
        if info.is_main:
            checkpoint(True)
            if cfg.keep_every and record["epoch"] and record["epoch"] % cfg.keep_every == 0:
                snap = side_paths(snapshot_path(cfg.out, record["epoch"]))
                for kind in ("weights", "json"):  # the files checkpoint(True) has just written
                    _atomic(snap[kind], lambda tmp, src=paths[kind]: shutil.copyfile(src, tmp))
            last = step >= total_steps or stop
            if cfg.knn_eval and (
                last or (cfg.knn_every and record["epoch"] and record["epoch"] % cfg.knn_every == 0)
            ):
                record.update(knn_eval(backbone, cfg, info.device))
            _log(cfg, record)
            print(json.dumps(record), flush=True)
        barrier(info)
    return paths["weights"]


__all__ = [
    "METHODS",
    "PretrainConfig",
    "pretrain",
    "simclr_loss",
    "moco_contrastive",
    "knn_accuracy",
    "build_ssl_model",
    "side_paths",
    "read_log",
    "ssl_transform",
    "lr_at",
    "momentum_at",
]
