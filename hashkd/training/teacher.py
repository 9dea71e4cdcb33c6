"""Train a hashing teacher with CIBHash (no labels used for training).

The loop supports:
* a full fine-tune, or a frozen backbone with only the hash head trained (the reference
  teacher: a frozen ViT with a linear probe);
* with a frozen backbone, a feature cache: ``feature_cache_views = E`` augments every training
  image E times once, runs the backbone once over them, and trains the head on pairs of
  cached features -- the same loss on the same views as the uncached path, at a fraction of
  the cost per epoch;
* checkpoint every epoch and ``resume``; validation mAP every ``val_every`` epochs on a
  validation split kept apart from the queries, keeping the best model as the artifact;
* torchrun / DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from hashkd.models import build_model
from hashkd.models.hash_model import HashModel
from hashkd.runtime.backends import file_sha256
from hashkd.settings import CONFIG_NAME, write_config
from hashkd.training.cibhash import CIBHashLoss
from hashkd.training.common import (
    Split,
    Timer,
    checkpoint_state,
    end_epoch,
    epoch_loader,
    resume_from,
    seed_everything,
    trainable_parameters,
    validation_map,
)
from hashkd.training.config import TeacherConfig, pretrain_weights_file
from hashkd.training.data_setup import prepare_data
from hashkd.training.distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup,
    init_distributed,
)
from hashkd.training.run_dir import RunDir
from hashkd.training.views import PairIndexDataset, TwoViewDataset, ViewBank


def train_teacher(cfg: TeacherConfig) -> Path:
    """Run CIBHash training; returns the output directory (a model artifact)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        cleanup(info)


def _train(cfg: TeacherConfig, info: DistInfo) -> Path:
    run = RunDir(cfg.out, is_main=info.is_main)
    gen = seed_everything(cfg.seed + info.rank)
    data = prepare_data(cfg.data, cfg.root, cfg.protocol, cfg.seed, max_train=cfg.max_train)
    mcfg = cfg.model_config()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(
        mcfg, pretrained=cfg.pretrained, weights=pretrain_weights_file(cfg.weights)
    ).to(info.device)
    model.config.meta = {
        "objective": "cibhash",
        "data": cfg.data,
        "seed": cfg.seed,
        "protocol": data.protocol,
    }
    if cfg.weights:  # what the initial backbone was, not only where
        weights_file = pretrain_weights_file(cfg.weights)
        model.config.meta["weights"] = str(Path(weights_file).resolve())
        model.config.meta["weights_sha256"] = file_sha256(weights_file)
    criterion = CIBHashLoss(tau=cfg.tau, beta=cfg.beta)
    optimizer = torch.optim.Adam(
        trainable_parameters([model]), lr=cfg.lr, weight_decay=cfg.weight_decay
    )

    start_epoch, best = 0, -math.inf
    if cfg.resume:
        start_epoch, best = resume_from(run, {"model": model}, optimizer, gen)
        if start_epoch >= cfg.epochs:
            if info.is_main:
                print(f"run in {cfg.out} already finished {start_epoch} epochs")
            return Path(cfg.out)
    run.write_json(
        "run.json",
        {
            "kind": "teacher",
            "config": asdict(cfg),
            "splits": data.summary(),
            "weights_sha256": model.config.meta.get("weights_sha256"),
        },
    )
    if info.is_main:
        write_config(run.path / CONFIG_NAME, cfg, "train-teacher")

    eval_tf = data.eval_transform(mcfg)
    view_tf = data.view_transform(mcfg)
    use_cache = cfg.feature_cache_views >= 2
    if use_cache:
        bank = ViewBank.build(
            data.train.source,
            data.train.indices,
            view_tf,
            cfg.feature_cache_views,
            seed=cfg.seed,
            progress=cfg.progress and info.is_main,
        )
        feats = bank.map_views(
            lambda x: model.features(x.to(info.device)),
            progress=cfg.progress and info.is_main,
            desc="caching backbone features",
        )
        step_model: torch.nn.Module = model.head
    else:
        step_model = model
    ddp_model = DDP(step_model) if info.enabled else step_model

    timer = Timer()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if use_cache:
            pairs = bank.pick_pairs(gen)
            ds = PairIndexDataset(pairs)
        else:
            ds = TwoViewDataset(data.train.source, data.train.indices, view_tf)
        loader = epoch_loader(
            ds, cfg.batch_size, info, gen, cfg.seed, epoch, 0 if use_cache else cfg.num_workers
        )
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and info.is_main),
            leave=False,
        )
        for batch in bar:
            if use_cache:
                idx, a, b = batch
                x1, x2 = feats[idx, a].to(info.device), feats[idx, b].to(info.device)
            else:
                x1, x2, _ = batch
                x1, x2 = x1.to(info.device), x2.to(info.device)
            u = ddp_model(torch.cat([x1, x2]))
            u1, u2 = u.chunk(2)
            loss = criterion(u1, u2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.item())
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        epoch_loss = all_reduce_mean(total / max(count, 1), info)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": epoch_loss,
            "elapsed_s": round(timer.elapsed(), 2),
        }
        best = end_epoch(
            run,
            info,
            model,
            record,
            cfg.epochs,
            cfg.val_every,
            best,
            validate=lambda: validation_map(
                model, data.val, data.val_database, eval_tf, info.device
            ),
            checkpoint=lambda b, e=epoch + 1: checkpoint_state(
                {"model": model}, optimizer, e, b, gen
            ),
        )
    return Path(cfg.out)


def cached_and_uncached_loss(
    model: HashModel, x1: torch.Tensor, x2: torch.Tensor, criterion: CIBHashLoss
) -> tuple[float, float]:
    """The CIBHash loss of the same two views through the full model and through cached features."""
    with torch.no_grad():
        full = criterion(model(x1), model(x2))
        f1, f2 = model.features(x1), model.features(x2)
        cached = criterion(model.head(f1), model.head(f2))
    return float(full), float(cached)


__all__ = ["TeacherConfig", "train_teacher", "Split"]
