"""Encode a dataset with a model artifact into a :class:`~hashkd.codes.CodeSet`.

Images go through the deterministic evaluation transform the artifact's ``config.json``
describes (resize to ``img_size``, ToTensor, Normalize(``mean``, ``std``); see
:func:`hashkd.data.eval_transform`), in batches, without gradients, with the model in eval
mode. The code set's ``meta`` records which model made the codes (directory, a digest of its
weights, backbone, role, bits) so that an evaluation can tell symmetric from asymmetric
retrieval, plus the data description, split, protocol and seed.

``hashkd encode`` (:func:`encode_data`, :func:`encode_shard`) runs the fast runtime instead
(:class:`hashkd.runtime.Encoder`: ONNX Runtime when the artifact has a current ONNX export),
fed by a DataLoader whose workers decode and resize the images (the runtime's PIL + numpy
preprocessing, bit-identical to the evaluation transform). With ``--shard I/N`` it encodes
shard ``I`` of ``N``: the contiguous range of positions ``[I*n//N, (I+1)*n//N)`` of the ``n``
selected images, into ``OUT/shard-I-of-N/`` with a completion marker written last
(:func:`hashkd.codes.write_shard`); a finished shard of the same model and data is skipped.
:func:`hashkd.codes.merge_shards` (``hashkd codes merge``) concatenates the shards back into
the images' order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from hashkd.codes import (
    SHARD_AGREEMENT_KEYS,
    CodeSet,
    CodeSetError,
    pack_codes,
    read_shard_marker,
    shard_dir_name,
    source_paths,
    write_shard,
)
from hashkd.data import (
    ImageDataset,
    eval_transform,
    get_protocol,
    load_dataset,
    make_loader,
    make_splits,
)
from hashkd.models import HashModel, ModelConfig, load_artifact
from hashkd.models.artifact import read_config
from hashkd.runtime.digest import artifact_digest, tensor_digest

SPLITS = ("all", "train", "val", "query", "database")


def model_digest(model: HashModel) -> str:
    """SHA-256 over the model's tensors (names, dtypes, shapes, bytes) in name order.

    Identifies a model independently of where its artifact lives: two code sets made by the
    same weights carry the same digest. :func:`artifact_digest` gives the same value for the
    model's artifact without building the model.
    """

    def items():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            yield name, str(t.dtype), tuple(t.shape), data

    return tensor_digest(items())


def config_meta(
    cfg: ModelConfig, digest: str, model_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """What a code set's ``meta.json`` says about the model that made it: its config and its
    weights' digest (:func:`model_digest` / :func:`artifact_digest`)."""
    return {
        "model": str(Path(model_dir).resolve()) if model_dir is not None else None,
        "model_digest": digest,
        "backbone": cfg.backbone,
        "role": cfg.role,
        "bits": int(cfg.bits),
        "img_size": int(cfg.img_size),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "model_config": cfg.to_dict(),
    }


def model_meta(model: HashModel, model_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """:func:`config_meta` of a built model (its digest computed from its weights)."""
    return config_meta(model.config, model_digest(model), model_dir)


def _as_model(model_or_dir: HashModel | str | os.PathLike[str]) -> tuple[HashModel, str | None]:
    if isinstance(model_or_dir, HashModel):
        return model_or_dir, None
    if isinstance(model_or_dir, (str, os.PathLike)):
        return load_artifact(model_or_dir), os.fspath(model_or_dir)
    raise ValueError(
        f"model {type(model_or_dir).__name__} is not valid: expected a HashModel or a model artifact directory"
    )


def dataset_sources(dataset: ImageDataset) -> tuple[list[str] | None, dict[str, Any]]:
    """Where each image of ``dataset`` came from, as a code set records it.

    Returns the images' paths relative to the data root (the image folder, the CIFAR-10
    folder or a list file's root; :func:`hashkd.codes.source_paths`) and the ``meta`` entry
    naming that root (``{"path_root": ...}``), or ``(None, {})`` for in-memory data.
    """
    paths = dataset.paths
    if paths is None:
        return None, {}
    root_dataset = getattr(dataset, "root", dataset)
    root_dir = getattr(root_dataset, "root_dir", None)
    if root_dir is None:
        return source_paths(paths, None), {}
    root = os.path.abspath(root_dir)
    return source_paths(paths, root), {"path_root": Path(root).as_posix()}


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
    paths, root = dataset_sources(dataset)
    info = {**model_meta(model, model_dir), "data": dataset.describe(), **root, **(meta or {})}
    return CodeSet(
        codes=codes,
        ids=np.asarray(dataset.source_indices, dtype=np.int64),
        labels=dataset.labels,
        meta=info,
        paths=paths,
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


# ------------------------------------------------------------------ runtime encoding, shards
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: a contiguous 1/count of the images (see module docstring)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard {self.index}/{self.count} is not valid: expected I/N with 0 <= I < N"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` -> ``Shard(I, N)``."""
        index, sep, count = str(text).partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"shard {text!r} is not valid: expected I/N, e.g. 0/4")
        return cls(int(index), int(count))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Shard | None:
        """The shard of a ``torchrun`` process (``RANK`` of ``WORLD_SIZE``), else ``None``."""
        env = os.environ if environ is None else environ
        rank, world = env.get("RANK"), env.get("WORLD_SIZE")
        if rank is None or world is None:
            return None
        if not rank.isdigit() or not world.isdigit():
            raise ValueError(
                f"RANK={rank!r} WORLD_SIZE={world!r} are not valid: expected non-negative integers"
            )
        return cls(int(rank), int(world))

    def bounds(self, total: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` of this shard among ``total`` images."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    @property
    def dirname(self) -> str:
        return shard_dir_name(self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class ResizeToUint8:
    """PIL image -> ``img_size x img_size`` RGB uint8 HWC tensor (the runtime's bilinear resize).

    A picklable DataLoader transform: workers decode and resize, the main process normalises
    the uint8 batch (4x less to pass between processes than float32).
    """

    def __init__(self, img_size: int) -> None:
        self.img_size = int(img_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from hashkd.runtime.preprocess import resize_uint8

        return torch.from_numpy(resize_uint8(image, self.img_size).copy())  # writable


def encode_with_runtime(
    encoder: Any,
    dataset: ImageDataset,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "encoding",
) -> np.ndarray:
    """Packed codes (n x K/8) of every image of ``dataset`` with a :class:`hashkd.runtime.Encoder`.

    Images are streamed from a DataLoader (``num_workers`` processes decode and resize) in
    batches of ``batch_size``; the codes equal ``encoder.encode`` of the same images.
    """
    from hashkd.runtime.preprocess import normalize_uint8

    view = dataset.with_transform(ResizeToUint8(encoder.img_size))
    loader = make_loader(
        view, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=False
    )
    mean, std = encoder.config.mean, encoder.config.std
    chunks = [np.zeros((0, encoder.bits // 8), dtype=np.uint8)]
    with tqdm(total=len(view), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for pixels, _labels, _idx in loader:
            chunks.append(encoder.encode_arrays(normalize_uint8(pixels.numpy(), mean, std)))
            bar.update(pixels.shape[0])
    return np.concatenate(chunks)


def open_encoder(
    model_dir: str | os.PathLike[str], backend: str = "auto", threads: int | None = None
):
    """A :class:`hashkd.runtime.Encoder` and the ``meta`` entries of the model it runs."""
    from hashkd.runtime import Encoder

    encoder = Encoder.from_artifact(model_dir, backend=backend, threads=threads)
    config, _ = read_config(model_dir)
    meta = config_meta(config, artifact_digest(model_dir), model_dir)
    info = {**meta, "backend": encoder.backend}
    return encoder, info


def encode_data(
    model: str | os.PathLike[str],
    data: str,
    root: str | None = None,
    split: str = "all",
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
    backend: str = "auto",
    threads: int | None = None,
) -> CodeSet:
    """:func:`select_split` then :func:`encode_with_runtime` (the ``hashkd encode`` command).

    ``model`` is a model artifact directory, run with ``backend`` (see
    :meth:`hashkd.runtime.Encoder.from_artifact`).
    """
    dataset, info = select_split(data, root=root, split=split, protocol=protocol, seed=seed)
    encoder, model_info = open_encoder(model, backend=backend, threads=threads)
    codes = encode_with_runtime(encoder, dataset, batch_size, num_workers, progress)
    paths, root = dataset_sources(dataset)
    return CodeSet(
        codes=codes,
        ids=np.asarray(dataset.source_indices, dtype=np.int64),
        labels=dataset.labels,
        meta={**model_info, "data": dataset.describe(), **root, **info},
        paths=paths,
    )


def encode_shard(
    model: str | os.PathLike[str],
    data: str,
    out: str | os.PathLike[str],
    shard: Shard,
    root: str | None = None,
    split: str = "all",
    protocol: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
    backend: str = "auto",
    threads: int | None = None,
) -> tuple[Path, bool]:
    """Encode shard ``shard`` of the selected images into ``out/shard-I-of-N``.

    Returns the shard folder and whether it was encoded (``False``: it was already finished
    by the same model on the same data, and is kept). A finished shard of another model or
    data raises instead of being overwritten.
    """
    dataset, info = select_split(data, root=root, split=split, protocol=protocol, seed=seed)
    start, stop = shard.bounds(len(dataset))
    folder = Path(out) / shard.dirname
    encoder, model_info = open_encoder(model, backend=backend, threads=threads)
    shard_info = {
        "index": shard.index,
        "count": shard.count,
        "start": start,
        "stop": stop,
        "total": len(dataset),
    }
    marker = read_shard_marker(folder)
    if marker is not None:
        want = {
            "shard": shard_info,
            **{k: {**model_info, **info}.get(k) for k in SHARD_AGREEMENT_KEYS},
        }
        got = {k: marker.get(k) for k in want}
        if got == want:
            return folder, False
        raise CodeSetError(
            f"{str(folder)!r} holds a finished shard of another model or data: remove it or "
            "write to another --out"
        )
    part = dataset.subset(np.arange(start, stop), transform=None)
    codes = encode_with_runtime(
        encoder, part, batch_size, num_workers, progress, desc=f"encoding shard {shard}"
    )
    paths, root = dataset_sources(part)
    codeset = CodeSet(
        codes=codes,
        ids=np.asarray(part.source_indices, dtype=np.int64),
        labels=part.labels,
        meta={**model_info, "data": dataset.describe(), **root, **info, "shard": shard_info},
        paths=paths,
    )
    write_shard(codeset, folder)
    return folder, True
