"""Self-supervised pretraining of a timm backbone on unlabeled images (``hashkd pretrain``).

The teacher of the reference setting is a frozen, large-scale pretrained ViT with only a
linear hash head trained. A user without pretrained weights for their domain gets such a
backbone from their own unlabeled images with SimCLR or MoCo v3 (the methods, their losses
and views: :mod:`hashkd.training.ssl`). Optimiser: AdamW with linear warm-up and a cosine
decay per step.

The run's log and checkpoint go through the shared :class:`~hashkd.training.run_dir.RunDir`
(atomic checkpoint, JSON-lines log) and :func:`~hashkd.training.common.training_state`;
every file is replaced atomically (:mod:`hashkd.io`). Outputs, in the run folder ``out``:

* ``backbone.safetensors`` -- the BACKBONE state dict only, with timm's own key names, so
  :func:`hashkd.models.build_model` (``--backbone-weights OUT``) loads it;
* ``backbone.safetensors.json`` -- its description: backbone, backbone_kwargs, img_size,
  method, epochs, data, seed, hashkd version (read by ``build_model``);
* ``checkpoint.pt`` -- the resumable checkpoint (tensors and plain values only,
  read back with ``torch.load(weights_only=True)``): ``model`` (the state dict of
  :class:`~hashkd.training.ssl.SimCLR` / ``MoCoV3``), ``optimizer``, ``step``,
  ``steps_per_epoch``, ``elapsed_s``, ``rng``, ``config`` -- the format of every earlier version,
  so an older run's checkpoint resumes;
* ``train_log.jsonl`` -- one JSON object per epoch (and per mid-epoch checkpoint);
* ``config.yaml`` -- the resolved settings (``hashkd pretrain --config`` re-runs them).

The layout of earlier versions, ``out = WEIGHTS.safetensors`` with ``WEIGHTS.safetensors.json``,
``.ckpt.pt``, ``.log.jsonl`` and ``.config.yaml`` beside it, is still written for an ``out``
ending in ``.safetensors`` (deprecated; the command line warns).

kNN accuracy (``knn_eval``) is the usual sanity figure of SSL features (weighted k-NN of
Wu et al., CVPR 2018, as used by DINO): cosine similarity, the k nearest training images vote
with weight ``exp(s / 0.07)``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hashkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from hashkd.io import atomic_write, atomic_write_json
from hashkd.models.backbones import small_image_kwargs
from hashkd.settings import CONFIG_NAME, write_config
from hashkd.training import PRETRAIN_METHODS as METHODS
from hashkd.training.common import (
    Timer,
    restore_training_state,
    seed_everything,
    training_state,
)
from hashkd.training.config import PretrainConfig
from hashkd.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
)
from hashkd.training.run_dir import RunDir
from hashkd.training.ssl import (
    MoCoV3,
    SimCLR,
    TwoViews,
    backbone_features,
    knn_accuracy,
    ssl_model,
    ssl_transform,
)

# --------------------------------------------------------------------------- files


WEIGHTS_NAME = "backbone.safetensors"


def file_layout(out: str | Path) -> bool:
    """True for the deprecated ``--out WEIGHTS.safetensors`` layout (files beside the weights)."""
    return str(out).endswith(".safetensors")


def side_paths(out: str | Path) -> dict[str, Path]:
    """The files of the run ``out``: a folder, or (deprecated) a weights file with files beside it."""
    out = Path(out)
    if file_layout(out):
        return {
            "weights": out,
            "json": Path(f"{out}.json"),
            "checkpoint": Path(f"{out}.ckpt.pt"),
            "log": Path(f"{out}.log.jsonl"),
            "config": Path(f"{out}.{CONFIG_NAME}"),
        }
    return {
        "weights": out / WEIGHTS_NAME,
        "json": out / f"{WEIGHTS_NAME}.json",
        "checkpoint": out / "checkpoint.pt",
        "log": out / "train_log.jsonl",
        "config": out / CONFIG_NAME,
    }


def snapshot_path(out: str | Path, epoch: int) -> Path:
    """Where ``--keep-every`` keeps the weights after ``epoch``: the weights file's name with
    ``-epochNNN`` before ``.safetensors`` (its description beside it)."""
    weights = side_paths(out)["weights"]
    return weights.with_name(f"{weights.stem}-epoch{int(epoch):03d}{weights.suffix}")


def run_dir(out: str | Path, is_main: bool = True) -> RunDir:
    """The run directory of the weights file ``out``: its folder, checkpoint and log beside it."""
    paths = side_paths(out)
    return RunDir(
        paths["weights"].parent,
        is_main,
        checkpoint_name=paths["checkpoint"].name,
        log_name=paths["log"].name,
    )


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The records of the run's training log (empty before the first epoch)."""
    return run_dir(out, is_main=False).read_log()


def save_backbone(backbone: nn.Module, cfg: PretrainConfig, extra: dict[str, Any]) -> None:
    """Write the backbone's state dict (safetensors) and its JSON description."""
    from safetensors.torch import save_file

    import hashkd

    paths = side_paths(cfg.out)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(
        paths["weights"],
        # one metadata key: safetensors writes several in hash-map order, which would make the
        # same weights two different files (the method is in the JSON description)
        lambda tmp: save_file(state, tmp, metadata={"format": "pt"}),
    )
    desc = {
        "backbone": cfg.backbone,
        "backbone_kwargs": small_image_kwargs(cfg.backbone, cfg.img_size, cfg.backbone_kwargs),
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
    atomic_write_json(paths["json"], desc)


def keep_snapshot(out: str | Path, epoch: int) -> None:
    """Copy the weights and description just written for ``out`` to the ``--keep-every`` names."""
    src, dst = side_paths(out), side_paths(snapshot_path(out, epoch))
    for kind in ("weights", "json"):
        atomic_write(dst[kind], lambda tmp, s=src[kind]: shutil.copyfile(s, tmp))


# --------------------------------------------------------------------------- model and schedule


def build_ssl_model(cfg: PretrainConfig) -> tuple[SimCLR | MoCoV3, nn.Module]:
    """``(ssl_model, backbone)`` for ``cfg`` (the backbone is built exactly as the hash models build it)."""
    from hashkd.models import ModelConfig, build_model

    mcfg = ModelConfig(
        backbone=cfg.backbone,
        bits=8,
        img_size=cfg.img_size,
        backbone_kwargs=small_image_kwargs(cfg.backbone, cfg.img_size, cfg.backbone_kwargs),
    )
    hm = build_model(mcfg)
    model = ssl_model(
        cfg.method,
        hm.backbone,
        hm.feature_dim,
        hidden=cfg.proj_hidden,
        out_dim=cfg.proj_dim,
        tau=cfg.tau,
        momentum=cfg.momentum,
    )
    return model, hm.backbone


def build_optimizer(model: nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on biases and norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


# --------------------------------------------------------------------------- kNN sanity figure


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


# --------------------------------------------------------------------------- data


def pretrain_pool(cfg: PretrainConfig):
    """``(dataset, indices, pool)`` of the unlabeled images to pretrain on.

    ``group`` picks a named part (e.g. CIFAR-10's ``train``); a data set with a ``train`` group
    uses it by default so that test images are never seen; without one, every image is a
    candidate. The validation images and the queries of ``protocol`` (seeded with ``seed``)
    are always removed, by identity, exactly as ``hashkd distill --pool`` removes them
    (:func:`hashkd.training.pool.select_pool`): checkpoints are chosen on the validation images
    and the table is measured on the queries, so the backbone must never have seen them.
    ``max_images`` then keeps a seeded subset. ``pool.describe()`` says how many were removed.
    """
    from hashkd.training.data_setup import prepare_data
    from hashkd.training.pool import select_pool

    data = prepare_data(cfg.data, cfg.root, cfg.protocol, cfg.seed)
    ds = data.dataset
    groups = getattr(ds, "groups", None) or {}
    group = cfg.group or ("train" if "train" in groups else None)
    if group is not None and group not in groups:
        raise ValueError(
            f"group={group!r} is not a part of {cfg.data!r}: expected one of {', '.join(groups) or '(none)'}"
        )
    pool = select_pool(group if group is not None else "all", data, cfg.data)
    idx = np.asarray(pool.split.indices, dtype=np.int64)
    if cfg.max_images is not None and cfg.max_images < len(idx):
        rng = np.random.default_rng(cfg.seed)
        idx = np.sort(rng.choice(idx, size=cfg.max_images, replace=False))
    cfg.group = group
    return ds, idx, pool


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of ``epoch`` (a function of seed and epoch only, so resume is exact)."""
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


# --------------------------------------------------------------------------- checkpoint and resume


def checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: PretrainConfig,
    step: int,
    steps_per_epoch: int,
    elapsed_s: float,
) -> dict[str, Any]:
    """The resumable state after ``step`` optimiser steps (module docstring: keep these keys)."""
    return {
        **training_state({"model": model}, optimizer),
        "step": int(step),
        "steps_per_epoch": int(steps_per_epoch),
        "elapsed_s": float(elapsed_s),
        "rng": torch.get_rng_state(),  # the augmentation stream (one process)
        "config": {"backbone": cfg.backbone, "method": cfg.method},
    }


def resume(
    run: RunDir,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: PretrainConfig,
    steps_per_epoch: int,
    info: DistInfo,
) -> tuple[int, float]:
    """Restore the checkpoint of ``run``; returns (steps done, seconds spent before)."""
    state = run.load_checkpoint()
    saved = state["config"]
    if saved["backbone"] != cfg.backbone or saved["method"] != cfg.method:
        raise ValueError(
            f"--resume: the checkpoint is for {saved['backbone']!r} / {saved['method']!r}, "
            f"not {cfg.backbone!r} / {cfg.method!r}"
        )
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(
            f"--resume: the checkpoint has {state['steps_per_epoch']} steps per epoch, this run "
            f"{steps_per_epoch}: expected the same data, batch size and process count"
        )
    restore_training_state(state, {"model": model}, optimizer)
    step = int(state["step"])
    if "rng" in state and not info.enabled:
        torch.set_rng_state(state["rng"])  # the augmentation stream continues where it stopped
    else:  # one process's RNG state is saved: each rank draws a fresh stream
        torch.manual_seed(cfg.seed * 1_000_003 + info.rank * 7_919 + step)
    return step, float(state.get("elapsed_s", 0.0))


# --------------------------------------------------------------------------- the loop


def pretrain(cfg: PretrainConfig) -> Path:
    """Run self-supervised pretraining; returns the weights path."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, info)
    finally:
        cleanup(info)


def _stop_requested(cfg: PretrainConfig, timer: Timer, info: DistInfo) -> bool:
    """Whether ``--time-limit-minutes`` has passed (the same answer on every rank)."""
    over = cfg.time_limit_min is not None and timer.elapsed() > 60 * cfg.time_limit_min
    if info.enabled:
        flag = torch.tensor([1.0 if over else 0.0])
        dist.all_reduce(flag)
        over = flag.item() > 0
    return over


def _pretrain(cfg: PretrainConfig, info: DistInfo) -> Path:
    run = run_dir(cfg.out, is_main=info.is_main)
    weights = side_paths(cfg.out)["weights"]
    if info.is_main:
        write_config(side_paths(cfg.out)["config"], cfg, "pretrain")
    seed_everything(cfg.seed + info.rank)
    ds, pool, held_out = pretrain_pool(cfg)
    world_batch = cfg.batch_size * info.world_size
    if len(pool) < world_batch:
        raise ValueError(
            f"batch-size={cfg.batch_size} x {info.world_size} processes is more than the "
            f"{len(pool)} images of {cfg.data!r}: expected a smaller batch"
        )
    steps_per_epoch = len(pool) // world_batch  # drop_last: every process, the same steps
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, backbone = build_ssl_model(cfg)
    model.to(info.device)
    optimizer = build_optimizer(model, cfg)
    step, elapsed_before = 0, 0.0
    if cfg.resume:
        step, elapsed_before = resume(run, model, optimizer, cfg, steps_per_epoch, info)
        if step >= total_steps:
            if info.is_main:
                print(f"pretraining in {cfg.out} already finished {step // steps_per_epoch} epochs")
            return weights
    ddp = DDP(model) if info.enabled else model
    transform = ssl_transform(cfg.img_size)
    timer = Timer()

    def elapsed() -> float:
        return round(elapsed_before + timer.elapsed(), 2)

    def save() -> None:  # main process only
        run.save_checkpoint(
            checkpoint(
                model, optimizer, cfg, step, steps_per_epoch, elapsed_before + timer.elapsed()
            )
        )
        save_backbone(
            backbone,
            cfg,
            {
                "steps": step,
                "epochs_done": step / steps_per_epoch,
                "pool_images": int(len(pool)),
                "pool": {**held_out.describe(), "size": int(len(pool))},
            },
        )

    stop = False
    lr = cfg.lr
    while step < total_steps and not stop:
        epoch = step // steps_per_epoch
        start = (step % steps_per_epoch) * world_batch
        order = epoch_order(len(pool), cfg.seed, epoch)[: steps_per_epoch * world_batch]
        mine = order[start:].view(-1, info.world_size, cfg.batch_size)[:, info.rank].reshape(-1)
        # The loader gets its own generator and keeps the global RNG for the augmentations
        # alone, so that a resumed run draws exactly the views of an uninterrupted one.
        loader = DataLoader(
            TwoViews(ds, pool[mine.numpy()], transform),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
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
            model.after_step(step, total_steps)
            step += 1
            total += float(loss.item())
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            if _stop_requested(cfg, timer, info):
                stop = True
                break
            mid_epoch = step % steps_per_epoch != 0
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and mid_epoch:
                if info.is_main:
                    save()
                run.log(
                    {
                        "event": "checkpoint",
                        "step": step,
                        "epoch_float": round(step / steps_per_epoch, 4),
                        "loss": total / max(1, count),
                        "elapsed_s": elapsed(),
                    }
                )
        loss_mean = all_reduce_mean(total / max(count, 1), info)
        epoch_done = step % steps_per_epoch == 0
        record: dict[str, Any] = {
            "event": "epoch" if epoch_done else "stopped",
            "epoch": step // steps_per_epoch if epoch_done else None,
            "epoch_float": round(step / steps_per_epoch, 4),
            "step": step,
            "loss": loss_mean,
            "lr": lr,
            "images_seen": step * world_batch,
            "elapsed_s": elapsed(),
        }
        if info.is_main:
            save()
            if cfg.keep_every and record["epoch"] and record["epoch"] % cfg.keep_every == 0:
                keep_snapshot(cfg.out, record["epoch"])
            last = step >= total_steps or stop
            if cfg.knn_eval and (
                last or (cfg.knn_every and record["epoch"] and record["epoch"] % cfg.knn_every == 0)
            ):
                record.update(knn_eval(backbone, cfg, info.device))
            run.log(record)
            print(json.dumps(record), flush=True)
        barrier(info)
    return weights


__all__ = [
    "METHODS",
    "PretrainConfig",
    "build_ssl_model",
    "knn_accuracy",
    "lr_at",
    "pretrain",
    "read_log",
    "side_paths",
    "small_image_kwargs",
    "snapshot_path",
]
