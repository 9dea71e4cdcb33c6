"""An artifact's ``config.json`` read as plain JSON, for serving without PyTorch.

:func:`hashkd.models.artifact.read_config` returns a :class:`hashkd.models.ModelConfig`, whose
module imports torch and timm (~500-700 MB resident). Encoding with an exported graph only
needs the input size, the normalisation and the code length, so the runtime reads them here
with ``json`` alone: :class:`RuntimeConfig` has the fields of ``ModelConfig`` that describe the
model's inputs and outputs, checked the same way.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashkd.codes import check_bits

#: Must equal :data:`hashkd.models.artifact.ARTIFACT_FORMAT_VERSION` (tests/test_lean_runtime.py).
ARTIFACT_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ArtifactConfigError(ValueError):
    """An artifact's config.json is missing, not JSON, or describes no usable model input."""


def _triple(value: Any, name: str, where: str, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        need = "positive" if positive else "finite"
        raise ArtifactConfigError(
            f"{where} has {name}={value!r}: expected three {need} numbers (one per RGB channel)"
        )
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class RuntimeConfig:
    """What the encoding runtime needs from ``config.json`` (same names as ``ModelConfig``)."""

    backbone: str
    bits: int
    img_size: int = 32
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    role: str = "teacher"
    head: str = "linear"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> RuntimeConfig:
        try:
            bits = check_bits(raw.get("bits"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ArtifactConfigError(f"{where}: {exc}") from None
        img_size = raw.get("img_size", 32)
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
            raise ArtifactConfigError(
                f"{where} has img_size={img_size!r}: expected an integer of at least 8 pixels"
            )
        backbone = raw.get("backbone")
        if not isinstance(backbone, str) or not backbone:
            raise ArtifactConfigError(f"{where} has backbone={backbone!r}: expected a model name")
        return cls(
            backbone=backbone,
            bits=bits,
            img_size=img_size,
            mean=_triple(raw.get("mean", _IMAGENET_MEAN), "mean", where, positive=False),
            std=_triple(raw.get("std", _IMAGENET_STD), "std", where, positive=True),
            role=str(raw.get("role", "teacher")),
            head=str(raw.get("head", "linear")),
            meta=dict(raw.get("meta") or {}),
        )


def read_artifact_config(directory: str | os.PathLike[str]) -> tuple[RuntimeConfig, dict]:
    """Read an artifact's ``config.json`` without importing torch: the config and the raw dict.

    Raises :class:`ArtifactConfigError` (a ``ValueError``) with the same messages as
    :func:`hashkd.models.artifact.read_config` for a missing directory, file or bad JSON.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactConfigError(
            f"model artifact {str(path)!r} is not a directory: expected a folder with config.json"
        )
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise ArtifactConfigError(f"model artifact {str(path)!r} has no config.json")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactConfigError(f"{str(cfg_path)!r} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ArtifactConfigError(
            f"{str(cfg_path)!r} holds {type(raw).__name__}: expected an object"
        )
    version = raw.get("format_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactConfigError(
            f"{str(cfg_path)!r} has format_version={version!r}: expected {ARTIFACT_FORMAT_VERSION}"
        )
    return RuntimeConfig.from_dict(raw, where=repr(str(cfg_path))), raw
