"""Model artifacts: a directory with ``config.json`` and ``model.safetensors``.

Nothing is pickled: the weights are safetensors and the architecture is rebuilt from the
JSON config through timm, so loading an artifact never executes code from the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from hashkd.io import atomic_write, atomic_write_bytes
from hashkd.models.hash_model import HashModel, ModelConfig
from hashkd.runtime.config import (
    ARTIFACT_FORMAT_VERSION,
    CONFIG_NAME,
    ArtifactConfigError,
    read_artifact_config,
)

WEIGHTS_NAME = "model.safetensors"


class ArtifactError(ValueError):
    """A model artifact directory is missing, incomplete or of an unknown format."""


def save_artifact(
    model: HashModel, directory: str | os.PathLike[str], extra: dict | None = None
) -> Path:
    """Write ``model`` as an artifact directory; returns its path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    cfg = {"format_version": ARTIFACT_FORMAT_VERSION, **model.config.to_dict()}
    if extra:
        cfg.update(extra)
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True).encode())
    return out


def read_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, dict]:
    """Read ``config.json`` of an artifact: the model config and the raw dict.

    The file checks are :func:`hashkd.runtime.config.read_artifact_config`'s (the torch-free
    reader the runtime uses), so both report a bad artifact with the same sentence.
    """
    try:
        _, raw = read_artifact_config(directory)
    except ArtifactConfigError as exc:
        raise ArtifactError(str(exc)) from None
    return ModelConfig.from_dict(raw), raw


def load_artifact(directory: str | os.PathLike[str], map_location: str = "cpu") -> HashModel:
    """Rebuild the model of an artifact directory, in eval mode."""
    config, _ = read_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise ArtifactError(f"model artifact {str(directory)!r} has no {WEIGHTS_NAME}")
    model = HashModel(config, pretrained=False)
    state = load_file(str(weights), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{str(weights)!r} does not match config.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()
