"""Binary codes: packing, Hamming distances and code sets on disk.

Conventions (docs/ARCHITECTURE.md): a code bit is 1 where the real-valued hash output is > 0; bits are
packed with ``numpy.packbits`` along the bit axis, most significant bit first, so a K-bit
code is K/8 uint8 bytes -- the layout FAISS binary indexes use.

A code set is a directory holding ``codes.npy`` (uint8, n x K/8), ``ids.npy`` (int64, n),
optionally ``labels.npy`` (uint8, n x C multi-hot), ``paths.json`` (where each code came from:
a JSON list of n strings, file paths relative to ``meta.json``'s ``path_root`` or URIs) and
``meta.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.io import atomic_write, atomic_write_bytes

CODESET_FORMAT_VERSION = 1
#: The file of a code set that says where each code came from (see :func:`source_paths`).
PATHS_NAME = "paths.json"
#: The file a finished shard of ``hashkd encode --shard`` ends with (written last, atomically).
SHARD_MARKER = "complete.json"
#: Meta entries every shard of one encode must share to be merged.
SHARD_AGREEMENT_KEYS = ("model_digest", "bits", "data_spec", "split", "protocol", "seed")
_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


class CodeSetError(ValueError):
    """A code set on disk is missing, malformed or inconsistent."""


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a positive multiple of 8, else raise ``ValueError``."""
    if not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise ValueError(
            f"bits={bits!r} is not valid: expected a positive multiple of 8 (16, 32, 64, 128 ...)"
        )
    return int(bits)


def pack_codes(logits: Any) -> np.ndarray:
    """Pack real-valued hash outputs (n x K, torch or numpy) into uint8 codes (n x K/8).

    Bit j is 1 where ``logits[:, j] > 0``; zero maps to bit 0.
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    arr = np.asarray(logits)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-d array of hash outputs (n x K), got shape {arr.shape}")
    check_bits(arr.shape[1])
    return np.packbits(arr > 0, axis=1)


def unpack_codes(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Unpack uint8 codes (n x K/8) into a {0,1} uint8 matrix (n x K)."""
    codes = as_codes(codes)
    out = np.unpackbits(codes, axis=1)
    if bits is not None and bits != out.shape[1]:
        raise ValueError(f"codes hold {out.shape[1]} bits, not {bits}")
    return out


def codes_to_signs(codes: np.ndarray) -> np.ndarray:
    """Unpack uint8 codes into a {-1,+1} float32 matrix (n x K)."""
    return unpack_codes(codes).astype(np.float32) * 2.0 - 1.0


def as_codes(codes: Any, bits: int | None = None) -> np.ndarray:
    """Validate and return a C-contiguous uint8 (n x K/8) code matrix."""
    arr = np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"codes must be a uint8 array of shape (n, bits/8), got dtype {arr.dtype} shape {arr.shape}"
        )
    if bits is not None and arr.shape[1] * 8 != bits:
        raise ValueError(f"codes are {arr.shape[1] * 8} bits long, expected {bits}")
    return np.ascontiguousarray(arr)


def hamming_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Exact Hamming distance matrix (nq x nd, int32) between packed codes.

    Uses xor + popcount; memory is nq x nd x K/8 bytes per query block, so large inputs
    are processed in blocks of queries.
    """
    q = as_codes(query)
    d = as_codes(database)
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query codes are {q.shape[1] * 8} bits, database codes {d.shape[1] * 8} bits"
        )
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    nbytes = q.shape[1]
    # Compare as uint64 words when possible: 8x fewer popcounts.
    if nbytes % 8 == 0:
        qw, dw = q.view(np.uint64), d.view(np.uint64)
    else:
        qw, dw = q, d
    block = max(1, int(2**26 // max(1, d.shape[0] * qw.shape[1])))
    for s in range(0, q.shape[0], block):
        x = np.bitwise_xor(qw[s : s + block, None, :], dw[None, :, :])
        out[s : s + block] = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
    return out


def source_paths(
    paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str] | None
) -> list[str]:
    """Where each image came from, as a code set records it.

    A path inside ``root`` becomes relative to it (``/`` separators: ``cats/001.jpg``); a path
    outside ``root`` (or every path, when ``root`` is None) stays absolute; a URI
    (``scheme://...``) is kept as it is.
    """
    base = os.path.abspath(root) if root is not None else None
    out: list[str] = []
    for p in paths:
        text = os.fspath(p)
        if "://" in text:
            out.append(text)
            continue
        full = os.path.abspath(text)
        if base is not None and (full == base or full.startswith(base.rstrip(os.sep) + os.sep)):
            out.append(Path(os.path.relpath(full, base)).as_posix())
        else:
            out.append(Path(full).as_posix())
    return out


def resolve_source(path: str, root: str | os.PathLike[str] | None) -> str | None:
    """The local file a code set's ``path`` names (joined to ``root`` when relative), or None
    for a URI or a relative path without a root."""
    if "://" in path:
        return None
    if os.path.isabs(path):
        return path
    return None if root is None else os.path.join(os.fspath(root), path)


@dataclass
class CodeSet:
    """Packed codes with the caller's int64 ids, optional multi-hot labels, optional source
    paths (one per code, see :func:`source_paths`; ``meta["path_root"]`` is their root) and
    metadata."""

    codes: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        self.codes = as_codes(self.codes)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if self.ids.shape[0] != self.codes.shape[0]:
            raise CodeSetError(f"{self.codes.shape[0]} codes but {self.ids.shape[0]} ids")
        if len(np.unique(self.ids)) != len(self.ids):
            raise CodeSetError("ids are not unique")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.uint8)
            if self.labels.ndim != 2 or self.labels.shape[0] != self.codes.shape[0]:
                raise CodeSetError(
                    f"labels must be n x C with n={self.codes.shape[0]}, got shape {self.labels.shape}"
                )
        if self.paths is not None:
            if not isinstance(self.paths, (list, tuple)) or not all(
                isinstance(p, str) for p in self.paths
            ):
                raise CodeSetError("paths must be a list of strings, one per code")
            self.paths = list(self.paths)
            if len(self.paths) != self.codes.shape[0]:
                raise CodeSetError(f"{self.codes.shape[0]} codes but {len(self.paths)} paths")

    @property
    def path_root(self) -> str | None:
        """The folder the relative ``paths`` are relative to (``meta["path_root"]``), or None."""
        root = self.meta.get("path_root")
        return str(root) if root else None

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1] * 8)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the code set into ``directory`` (created if needed), each file atomically."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        _save_npy(path / "codes.npy", self.codes)
        _save_npy(path / "ids.npy", self.ids)
        if self.labels is not None:
            _save_npy(path / "labels.npy", self.labels)
        elif (path / "labels.npy").exists():
            (path / "labels.npy").unlink()
        if self.paths is not None:
            atomic_write_bytes(path / PATHS_NAME, json.dumps(self.paths).encode())
        elif (path / PATHS_NAME).exists():
            (path / PATHS_NAME).unlink()
        meta = {
            "format_version": CODESET_FORMAT_VERSION,
            "bits": self.bits,
            "count": len(self),
            **self.meta,
        }
        atomic_write_bytes(path / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CodeSet:
        """Read a code set written by :meth:`save` (or by any tool using the same layout)."""
        path = Path(directory)
        if not path.is_dir():
            raise CodeSetError(f"code set directory {str(path)!r} does not exist")
        if not (path / "codes.npy").is_file():
            raise CodeSetError(f"{str(path)!r} is not a code set: codes.npy is missing")
        try:
            codes = np.load(path / "codes.npy", allow_pickle=False)
            ids = (
                np.load(path / "ids.npy", allow_pickle=False)
                if (path / "ids.npy").is_file()
                else np.arange(codes.shape[0], dtype=np.int64)
            )
            labels = (
                np.load(path / "labels.npy", allow_pickle=False)
                if (path / "labels.npy").is_file()
                else None
            )
        except ValueError as exc:
            raise CodeSetError(f"code set {str(path)!r} could not be read: {exc}") from None
        meta: dict[str, Any] = {}
        if (path / "meta.json").is_file():
            try:
                meta = json.loads((path / "meta.json").read_text())
            except json.JSONDecodeError as exc:
                raise CodeSetError(
                    f"{str(path / 'meta.json')!r} is not valid JSON: {exc}"
                ) from None
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise CodeSetError(
                f"{str(path / 'codes.npy')!r} must hold uint8 n x K/8 codes, got {codes.dtype} {codes.shape}"
            )
        paths = None
        if (path / PATHS_NAME).is_file():
            try:
                paths = json.loads((path / PATHS_NAME).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CodeSetError(f"{str(path / PATHS_NAME)!r} is not valid JSON: {exc}") from None
            if not isinstance(paths, list):
                raise CodeSetError(
                    f"{str(path / PATHS_NAME)!r} must hold a JSON list of strings, one per code"
                )
        for key in ("format_version", "bits", "count"):
            meta.pop(key, None)
        try:
            return cls(codes=codes, ids=ids, labels=labels, meta=meta, paths=paths)
        except CodeSetError as exc:
            raise CodeSetError(f"code set {str(path)!r} is not consistent: {exc}") from None


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array)

    atomic_write(path, write)


# ------------------------------------------------------------------------------- shards
def shard_dir_name(index: int, count: int) -> str:
    """``shard-I-of-N``: the folder ``hashkd encode --shard I/N --out OUT`` writes in ``OUT``."""
    return f"shard-{int(index)}-of-{int(count)}"


def read_shard_marker(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The completion marker of a finished shard, or ``None`` when the shard is not finished."""
    marker = Path(directory) / SHARD_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def write_shard(codeset: CodeSet, directory: str | os.PathLike[str]) -> Path:
    """Save a shard's code set, then its completion marker (last, atomically).

    A crash at any moment leaves either a finished shard or one without a marker, which
    ``hashkd encode`` encodes again and :func:`merge_shards` refuses.
    """
    path = Path(directory)
    (path / SHARD_MARKER).unlink(missing_ok=True)
    codeset.save(path)
    marker = {"count": len(codeset), "bits": codeset.bits, **_shard_identity(codeset.meta)}
    atomic_write_bytes(path / SHARD_MARKER, json.dumps(marker, indent=2, sort_keys=True).encode())
    return path


def _shard_identity(meta: dict[str, Any]) -> dict[str, Any]:
    return {"shard": meta.get("shard"), **{k: meta.get(k) for k in SHARD_AGREEMENT_KEYS}}


def expand_shard_parts(parts: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Shard folders named by ``parts``: a shard folder, or a folder holding ``shard-I-of-N`` ones."""
    out: list[Path] = []
    for part in parts:
        path = Path(part)
        if not path.is_dir():
            raise CodeSetError(f"shard {str(path)!r} does not exist")
        if (path / "codes.npy").is_file() or (path / SHARD_MARKER).is_file():
            out.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_dir() and _SHARD_DIR.match(p.name))
        if not found:
            raise CodeSetError(
                f"{str(path)!r} is neither a shard nor a folder of shard-I-of-N folders"
            )
        out.extend(found)
    return out


def merge_shards(parts: Sequence[str | os.PathLike[str]]) -> CodeSet:
    """One code set from the finished shards of one ``hashkd encode --shard I/N`` run.

    The shards must all be finished (completion marker), agree on the model (digest), bits,
    data spec, split, protocol, seed, shard count and image count, and together cover every
    shard once; their codes are concatenated in shard order, which is the images' order (a
    shard holds a contiguous range). The merged meta is the shards' minus ``shard``.
    Anything else raises :class:`CodeSetError` naming the offending part.
    """
    paths = expand_shard_parts(parts)
    if not paths:
        raise CodeSetError("no shards to merge: expected at least one shard folder")
    loaded: list[tuple[Path, CodeSet]] = []
    for path in paths:
        if read_shard_marker(path) is None:
            raise CodeSetError(
                f"shard {str(path)!r} is not finished (no {SHARD_MARKER}): run its encode again"
            )
        codeset = CodeSet.load(path)
        if not isinstance(codeset.meta.get("shard"), dict):
            raise CodeSetError(f"{str(path)!r} is not a shard: its meta.json has no 'shard' entry")
        loaded.append((path, codeset))
    first_path, first = loaded[0]
    ref = {**_shard_identity(first.meta), "bits": first.bits}
    for path, codeset in loaded[1:]:
        got = {**_shard_identity(codeset.meta), "bits": codeset.bits}
        for key in ("bits", "model_digest", "data_spec", "split", "protocol", "seed"):
            if got[key] != ref[key]:
                raise CodeSetError(
                    f"shard {str(path)!r} has {key}={got[key]!r} but {str(first_path)!r} has "
                    f"{ref[key]!r}: expected shards of one encode run"
                )
        for key in ("count", "total"):
            if got["shard"].get(key) != ref["shard"].get(key):
                raise CodeSetError(
                    f"shard {str(path)!r} is one of {got['shard'].get('count')} shards of "
                    f"{got['shard'].get('total')} images but {str(first_path)!r} one of "
                    f"{ref['shard'].get('count')} of {ref['shard'].get('total')}: expected shards "
                    "of one encode run"
                )
    count, total = int(ref["shard"]["count"]), int(ref["shard"]["total"])
    by_index: dict[int, tuple[Path, CodeSet]] = {}
    for path, codeset in loaded:
        index = int(codeset.meta["shard"]["index"])
        if index in by_index:
            raise CodeSetError(
                f"shard {index} of {count} is given twice ({str(by_index[index][0])!r} and "
                f"{str(path)!r}): expected each shard once"
            )
        by_index[index] = (path, codeset)
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        names = ", ".join(str(i) for i in missing)
        raise CodeSetError(
            f"shard(s) {names} of {count} are missing: expected all of 0..{count - 1}"
        )
    position = 0
    for index in range(count):
        path, codeset = by_index[index]
        info = codeset.meta["shard"]
        if int(info["start"]) != position or int(info["stop"]) - position != len(codeset):
            raise CodeSetError(
                f"shard {str(path)!r} holds images {info['start']}..{info['stop']} "
                f"({len(codeset)} codes) but images from {position} were expected next"
            )
        position = int(info["stop"])
    if position != total:
        raise CodeSetError(f"the shards hold {position} images, not the {total} of the data")
    ordered = [by_index[i][1] for i in range(count)]
    all_ids = np.concatenate([c.ids for c in ordered])
    if len(np.unique(all_ids)) != len(all_ids):
        raise CodeSetError("the shards overlap: some ids appear in more than one shard")
    has_labels = {c.labels is not None for c in ordered}
    if len(has_labels) != 1:
        raise CodeSetError("some shards have labels and others not: expected shards of one run")
    has_paths = {c.paths is not None for c in ordered}
    if len(has_paths) != 1:
        raise CodeSetError("some shards have paths and others not: expected shards of one run")
    meta = {k: v for k, v in first.meta.items() if k != "shard"}
    return CodeSet(
        codes=np.concatenate([c.codes for c in ordered]),
        ids=all_ids,
        labels=np.concatenate([c.labels for c in ordered]) if has_labels == {True} else None,
        meta=meta,
        paths=[p for c in ordered for p in c.paths or ()] if has_paths == {True} else None,
    )
