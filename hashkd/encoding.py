"""Encode a dataset with a model artifact into a :class:`~hashkd.codes.CodeSet`.

Images go through the deterministic evaluation transform the artifact's ``config.json``
describes (resize to ``img_size``, ToTensor, Normalize(``mean``, ``std``); see
:func:`hashkd.data.eval_transform`), in batches, without gradients, with the model in eval
mode. The code set's ``meta`` records which model made the codes (directory, a digest of its
weights, backbone, role, bits) so that an evaluation can tell symmetric from asymmetric
retrieval, plus the data description, split, protocol and seed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hashkd.codes import CodeSet, pack_codes
from hashkd.data import (
    ImageDataset,
    eval_transform,
    get_protocol,
    load_dataset,
    make_loader,
    make_splits,
)
from hashkd.models import HashModel, load_artifact

SPLITS = ("all", "train", "val", "query", "database")


def model_digest(model: HashModel) -> str:
    """SHA-256 over the model's tensors (names, dtypes, shapes, bytes) in name order.

    Identifies a model independently of where its artifact lives: two code sets made by the
    same weights carry the same digest.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_meta(model: HashModel, model_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What a code set's ``meta.json`` says about the model that made it."""
    cfg = model.config
    return {
        "model": str(Path(model_dir).resolve()) if model_dir is not None else None,
        "model_digest": model_digest(model),
        "backbone": cfg.backbone,
        "role": cfg.role,
        "bits": int(cfg.bits),
        "img_size": int(cfg.img_size),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "model_config": cfg.to_dict(),
    }


def _as_model(model_or_dir: HashModel | str | os.PathLike[str]) -> tuple[HashModel, str | None]:
    if isinstance(model_or_dir, HashModel):
        return model_or_dir, None
    if isinstance(model_or_dir, (str, os.PathLike)):
        return load_artifact(model_or_dir), os.fspath(model_or_dir)
    raise ValueError(
        f"model {type(model_or_dir).__name__} is not valid: expected a HashModel or a model artifact directory"
    )


@torch.no_grad()
def encode_dataset(
    model_or_dir: HashModel | str | os.PathLike[str],
    dataset: ImageDataset,
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
) -> CodeSet:
    """Packed codes of every image of ``dataset`` (an :class:`hashkd.data.ImageDataset` or view).

    ``ids`` are the images' indices in the root dataset (``dataset.source_indices``), ``labels``
    the dataset's multi-hot labels; ``meta`` = :func:`model_meta` + the dataset's ``describe()``
    + the caller's ``meta``. The model is left in eval mode.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not valid: expected a positive integer")
    if not isinstance(dataset, ImageDataset):
        raise ValueError(
            f"dataset {type(dataset).__name__} is not valid: expected a hashkd.data ImageDataset (see load_dataset)"
        )
    model, model_dir = _as_model(model_or_dir)
    model.eval()
    cfg = model.config
    view = dataset.with_transform(eval_transform(int(cfg.img_size), cfg.mean, cfg.std))
    loader = make_loader(
        view, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=False
    )
    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    bar = tqdm(total=len(view), desc="encoding", unit="img", disable=not progress, leave=False)
    try:
        for images, _labels, _idx in loader:
            logits = model(images.to(device))
            chunks.append(pack_codes(logits))
            bar.update(images.shape[0])
    finally:
        bar.close()
    codes = np.concatenate(chunks) if chunks else np.zeros((0, cfg.bits // 8), dtype=np.uint8)
    info = {**model_meta(model, model_dir), "data": dataset.describe(), **(meta or {})}
    return CodeSet(
        codes=codes,
        ids=np.asarray(dataset.source_indices, dtype=np.int64),
        labels=dataset.labels,
        meta=info,
    )


def select_split(
    data: str,
    root: str | None = None,
    split: str = "all",
    protocol: str | None = None,
    seed: int = 0,
) -> tuple[ImageDataset, dict[str, Any]]:
    """The images of ``data`` to encode: all of them, or one split of a named protocol.

    ``protocol`` defaults to the data set's own (``digits``, ``cifar10-cpu``) or, for a user's
    folder, the proportional protocol of training (:func:`hashkd.training.data_setup.default_protocol`),
    so that ``split="query"`` here is the query split the trainers held out with the same seed.
    Returns the dataset (view) and the meta entries describing the choice.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid: expected one of {', '.join(SPLITS)}")
    dataset = load_dataset(data, root=root)
    info: dict[str, Any] = {"data_spec": str(data), "split": split}
    if split == "all":
        if protocol is not None:
            raise ValueError(
                f"protocol={protocol!r} was given but split='all' encodes every image: expected a split "
                "(query, database, train, val) with a protocol"
            )
        return dataset, info
    splits, meta = protocol_splits(data, dataset, protocol=protocol, seed=seed)
    info.update(meta)
    return splits[split], info


def protocol_splits(data: str, dataset: ImageDataset, protocol: str | None = None, seed: int = 0):
    """The train/val/query/database :class:`hashkd.data.Splits` of ``dataset`` and their meta entries.

    ``protocol`` defaults as in training (:func:`hashkd.training.data_setup.default_protocol`).
    """
    if protocol:
        proto = get_protocol(protocol)
    else:
        from hashkd.training.data_setup import default_protocol

        proto = default_protocol(str(data), dataset)
    splits = make_splits(proto, dataset, seed)
    return splits, {"protocol": splits.meta["protocol"], "seed": int(seed), "splits": splits.meta}


def encode_data(
    model: HashModel | str | os.PathLike[str],
    data: str,
    root: str | None = None,
    split: str = "all",
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> CodeSet:
    """:func:`select_split` then :func:`encode_dataset` (the ``hashkd encode`` command)."""
    dataset, info = select_split(data, root=root, split=split, protocol=protocol, seed=seed)
    return encode_dataset(model, dataset, batch_size=batch_size, progress=progress, meta=info)
