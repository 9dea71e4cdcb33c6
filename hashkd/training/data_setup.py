"""From a ``--data`` value to the train / val / query / database splits a trainer needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hashkd.data import load_dataset
from hashkd.data.splits import Protocol, get_protocol, make_splits, primary_class
from hashkd.data.transforms import eval_transform, train_transform
from hashkd.models import ModelConfig
from hashkd.training.common import Split


def _split(view) -> Split:
    return Split(source=view, indices=np.arange(len(view), dtype=np.int64))


def default_protocol(data: str, dataset) -> Protocol:
    """The named protocol for ``digits`` / ``cifar10``; for a user's folder, a proportional one.

    A user's folder is split per class into 50% train, 10% validation, 10% queries, and a
    database of everything but the validation images and queries (the training images
    included, as in the CIFAR-10 protocol).
    """
    name = data.split(":", 1)[0]
    if name == "digits":
        return get_protocol("digits")
    if name == "cifar10":
        return get_protocol("cifar10-cpu")
    counts = np.bincount(primary_class(dataset.labels))
    smallest = int(counts[counts > 0].min())
    if smallest < 4:
        raise ValueError(
            f"the smallest class of {data!r} has {smallest} images: expected at least 4 per class to draw "
            "train, validation, query and database splits"
        )
    train = max(1, smallest // 2)
    held = max(1, smallest // 10)
    return Protocol(
        name="auto",
        train=train,
        val=held,
        query=held,
        database="rest+train",
        description="per class: 50% train, 10% val, 10% query; database = rest + train",
    )


@dataclass
class TrainingData:
    train: Split
    val: Split
    query: Split
    database: Split
    protocol: str
    meta: dict[str, Any]
    dataset: Any = None  # the loaded --data dataset the splits index (for --pool)

    @property
    def val_database(self) -> Split:
        """Validation queries search the training images (never the test queries)."""
        return self.train

    @staticmethod
    def eval_transform(cfg: ModelConfig):
        return eval_transform(cfg.img_size, cfg.mean, cfg.std)

    @staticmethod
    def view_transform(cfg: ModelConfig):
        return train_transform(cfg.img_size, cfg.mean, cfg.std)

    def summary(self) -> dict[str, Any]:
        return {
            **self.meta,
            "sizes": {k: len(getattr(self, k)) for k in ("train", "val", "query", "database")},
        }


def prepare_data(
    data: str,
    root: str | None,
    protocol: str | None,
    seed: int,
    max_train: int | None = None,
    database_per_class: int | None = None,
) -> TrainingData:
    """Load ``data`` and draw the splits of ``protocol`` (default: :func:`default_protocol`).

    ``max_train`` keeps a seeded, class-balanced subset of the training split (quick runs).
    """
    dataset = load_dataset(data, root=root)
    proto = get_protocol(protocol) if protocol else default_protocol(data, dataset)
    if max_train is not None:
        per_class = max(1, int(max_train) // max(1, dataset.labels.shape[1]))
        if per_class < proto.train:
            db = proto.database
            proto = replace(proto, train=per_class, database=db)
    splits = make_splits(proto, dataset, seed, database_per_class=database_per_class)
    return TrainingData(
        train=_split(splits["train"]),
        val=_split(splits["val"]),
        query=_split(splits["query"]),
        database=_split(splits["database"]),
        protocol=splits.meta["protocol"],
        meta=splits.meta,
        dataset=dataset,
    )
