"""Binary codes: packing, Hamming distances and code sets on disk.

Conventions (docs/ARCHITECTURE.md): a code bit is 1 where the real-valued hash output is > 0; bits are
packed with ``numpy.packbits`` along the bit axis, most significant bit first, so a K-bit
code is K/8 uint8 bytes -- the layout FAISS binary indexes use.

A code set is a directory holding ``codes.npy`` (uint8, n x K/8), ``ids.npy`` (int64, n),
optionally ``labels.npy`` (uint8, n x C multi-hot) and ``meta.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CODESET_FORMAT_VERSION = 1


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


@dataclass
class CodeSet:
    """Packed codes with the caller's int64 ids, optional multi-hot labels and metadata."""

    codes: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

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

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1] * 8)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the code set into ``directory`` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "codes.npy", self.codes)
        np.save(path / "ids.npy", self.ids)
        if self.labels is not None:
            np.save(path / "labels.npy", self.labels)
        elif (path / "labels.npy").exists():
            (path / "labels.npy").unlink()
        meta = {
            "format_version": CODESET_FORMAT_VERSION,
            "bits": self.bits,
            "count": len(self),
            **self.meta,
        }
        (path / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
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
        for key in ("format_version", "bits", "count"):
            meta.pop(key, None)
        return cls(codes=codes, ids=ids, labels=labels, meta=meta)
