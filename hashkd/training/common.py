"""Pieces shared by the teacher and student trainers: seeding, optimisers, validation, resume."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hashkd.codes import pack_codes
from hashkd.training.views import EvalDataset


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@dataclass
class Split:
    """Images ``indices`` of ``source`` (an object with ``load_image(i)`` and ``labels``)."""

    source: Any
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels)[self.indices]


@torch.no_grad()
def encode_split(
    model: nn.Module,
    split: Split,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> np.ndarray:
    """Packed codes of every image of ``split`` under the deterministic ``transform``."""
    return pack_codes(split_logits(model, split, transform, device, batch_size, num_workers))


@torch.no_grad()
def split_logits(
    model: nn.Module,
    split: Split,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> torch.Tensor:
    """The model's outputs (N x K, on the CPU) for every image of ``split`` under ``transform``."""
    was = model.training
    model.eval()
    loader = DataLoader(
        EvalDataset(split.source, split.indices, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    outs = [model(x.to(device)).cpu() for x, _ in loader]
    model.train(was)
    return torch.cat(outs)


#: Subtracted from a collapsed epoch's selection score, so that it ranks below every
#: non-collapsed epoch (mAP lies in [0, 1]).
COLLAPSED_PENALTY = 2.0


@dataclass(frozen=True)
class Validation:
    """One validation of a model: tie-robust mAP, position-broken mAP and its codes' health.

    ``map_tie_averaged`` (the expected mAP@K under a random order of equal distances) is the
    figure that selects checkpoints; ``map`` breaks ties by database position (reported beside
    it); ``health`` is :func:`hashkd.metrics.code_health` of the model's own codes.
    """

    map_tie_averaged: float
    map: float
    health: dict[str, Any]

    @property
    def collapsed(self) -> bool:
        return bool(self.health["collapsed"])

    def selection_score(self) -> float:
        """What checkpoint selection maximises: the tie-averaged mAP, minus
        :data:`COLLAPSED_PENALTY` for collapsed codes (never better than a healthy epoch)."""
        return self.map_tie_averaged - (COLLAPSED_PENALTY if self.collapsed else 0.0)

    def record(self) -> dict[str, Any]:
        """The JSON-lines log fields of this validation."""
        return {
            "val_map": self.map_tie_averaged,
            "val_map_position": self.map,
            "val_collapsed": self.collapsed,
            "val_code_health": self.health,
        }


def validation_map(
    model: nn.Module,
    query: Split,
    database: Split,
    transform: Callable,
    device: torch.device,
    topk: int = 1000,
    database_codes: np.ndarray | None = None,
    order_seed: int = 0,
) -> Validation:
    """Validate ``model``: ``query`` against ``database`` (both coded by ``model`` unless given).

    The database is put in a random order drawn from ``order_seed`` before ranking, so the
    position-broken ``map`` cannot gain from a class-sorted database; the tie-averaged mAP
    does not depend on the order. ``health`` describes the model's database codes (its query
    codes when ``database_codes`` come from another model).
    """
    from hashkd.metrics import code_health, evaluate_codes

    q = encode_split(model, query, transform, device)
    own_database = database_codes is None
    d = encode_split(model, database, transform, device) if own_database else database_codes
    order = np.random.default_rng(order_seed).permutation(len(database))
    result = evaluate_codes(
        q,
        d[order],
        query.labels,
        database.labels[order],
        topk=min(topk, len(database)),
        curves=False,
    )
    return Validation(
        map_tie_averaged=float(result["map_tie_averaged"]),
        map=float(result["map"]),
        health=code_health(d if own_database else q),
    )


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy_seed_note": "numpy RNG is not used for training order",
    }


def trainable_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def epoch_loader(
    ds, batch_size: int, info, gen: torch.Generator, seed: int, epoch: int, num_workers: int = 0
) -> DataLoader:
    """The loader of one epoch: seeded shuffling, or a DistributedSampler under torchrun."""
    from torch.utils.data import DistributedSampler

    sampler = (
        DistributedSampler(ds, shuffle=True, seed=seed, drop_last=True) if info.enabled else None
    )
    if sampler is not None:
        sampler.set_epoch(epoch)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen if sampler is None else None,
        drop_last=len(ds) > batch_size,
        num_workers=num_workers,
    )


def end_epoch(
    run,
    info,
    model: nn.Module,
    record: dict[str, Any],
    epochs: int,
    val_every: int,
    best: float,
    validate: Callable[[], Validation],
    checkpoint: Callable[[float], dict[str, Any]],
) -> float:
    """Validate when due, keep the best model as the run's artifact, log, checkpoint.

    ``best`` is the best :meth:`Validation.selection_score` so far (tie-averaged mAP; a
    collapsed epoch never beats a healthy one); it is returned updated. The record gets the
    fields of :meth:`Validation.record` and a collapse warning is printed. Only the main
    process validates and writes.
    """
    from hashkd.metrics import collapse_warning
    from hashkd.models import save_artifact
    from hashkd.training.distributed import barrier

    epoch = int(record["epoch"])
    improved = False
    if info.is_main and (epoch % val_every == 0 or epoch == epochs):
        result = validate()
        record.update(result.record())
        warning = collapse_warning(result.health, f"validation codes at epoch {epoch}")
        if warning:
            print(warning, flush=True)
        if result.selection_score() > best:
            best, improved = result.selection_score(), True
    if info.is_main:
        if improved or not (run.path / "model.safetensors").exists():
            model.config.meta.update(
                {
                    "epoch": epoch,
                    "val_map": record.get("val_map"),
                    "val_map_position": record.get("val_map_position"),
                    "val_collapsed": record.get("val_collapsed"),
                }
            )
            save_artifact(model, run.path)
        run.log(record)
        run.save_checkpoint(checkpoint(best))
        print(json.dumps(record), flush=True)
    barrier(info)
    return best


def training_state(
    modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The state dict of each module (under its name) and the optimiser's, for a checkpoint."""
    return {
        **{name: m.state_dict() for name, m in modules.items()},
        "optimizer": optimizer.state_dict(),
    }


def restore_training_state(
    state: dict[str, Any], modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer
) -> None:
    """Load what :func:`training_state` saved back into ``modules`` and ``optimizer``."""
    for name, m in modules.items():
        m.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])


def checkpoint_state(
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best: float,
    gen: torch.Generator,
) -> dict[str, Any]:
    """What a resumable checkpoint holds: tensors and plain values only (weights_only loadable)."""
    return {
        **training_state(modules, optimizer),
        "epoch": int(epoch),
        "best_map": float(best),
        "generator": gen.get_state(),
    }


def resume_from(
    run, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[int, float]:
    """Restore a :func:`checkpoint_state` from ``run``; returns (epochs done, best val mAP)."""
    state = run.load_checkpoint()
    restore_training_state(state, modules, optimizer)
    gen.set_state(state["generator"])
    return int(state["epoch"]), float(state["best_map"])
