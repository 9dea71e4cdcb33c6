"""A reproducible DataLoader: seeded shuffling, seeded workers, optional DistributedSampler."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from torch's per-worker seed.

    PyTorch already seeds each worker's torch generator with ``base_seed + worker_id``
    (``base_seed`` drawn from the loader's generator), which drives torchvision's random
    transforms; this makes any numpy/``random`` use in transforms reproducible too.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose order and worker seeds follow ``seed``.

    - ``shuffle``: a new permutation every epoch, drawn from a ``torch.Generator`` seeded
      with ``seed``: the sequence of epochs is the same on every run.
    - ``distributed``: a :class:`~torch.utils.data.DistributedSampler` (``seed``, ``shuffle``,
      ``drop_last``; ``num_replicas``/``rank`` default to the initialised process group).
      Call ``loader.sampler.set_epoch(epoch)`` at the start of every epoch, otherwise every
      epoch repeats the same order.
    - Workers are seeded (:func:`seed_worker`) and kept alive between epochs.
    - ``pin_memory`` defaults to ``torch.cuda.is_available()``.

    The dataset must return tensors (set a transform: ``ds.with_transform(eval_transform(...))``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid: expected a positive integer")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} is not valid: expected an integer >= 0")
    if getattr(dataset, "transform", True) is None:
        raise ValueError(
            "the dataset has no transform and yields PIL images, which cannot be batched: "
            "expected dataset.with_transform(eval_transform(...)) or two_view_transform(...)"
        )
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    sampler = None
    if distributed:
        sampler = DistributedSampler(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )
