"""A training run's directory: JSON-lines log, resumable checkpoint, best artifact.

Layout of ``out/``::

    config.json, model.safetensors   the best model so far (a model artifact: models/artifact.py)
    checkpoint.pt                    last epoch: weights, optimiser, epoch, RNG (resume)
    train_log.jsonl                  one JSON object per epoch / validation
    run.json                         the run's own settings, seed and splits summary

Pretraining (``hashkd pretrain --out W.safetensors``) keeps its files beside the weights
instead: ``RunDir(W's folder, checkpoint_name="W.safetensors.ckpt.pt",
log_name="W.safetensors.log.jsonl")``.

Every file is replaced atomically (:mod:`hashkd.io`); the log is appended to. Checkpoints
hold only tensors and plain Python values and are read back with
``torch.load(weights_only=True)``: no code is ever unpickled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from hashkd.io import atomic_open, atomic_write_json

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"
RUN_NAME = "run.json"


class RunDir:
    """Files of one training run; only the main process writes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        is_main: bool = True,
        *,
        checkpoint_name: str = CHECKPOINT_NAME,
        log_name: str = LOG_NAME,
    ):
        self.path = Path(path)
        self.is_main = is_main
        self.checkpoint_name = checkpoint_name
        self.log_name = log_name
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.checkpoint_name

    @property
    def log_path(self) -> Path:
        return self.path / self.log_name

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        p = self.log_path
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def write_json(self, name: str, obj: dict[str, Any]) -> None:
        if self.is_main:
            atomic_write_json(self.path / name, obj)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with atomic_open(self.checkpoint_path) as f:
            torch.save(state, f)

    def load_checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint_path.is_file():
            raise ValueError(
                f"--resume was given but {str(self.checkpoint_path)!r} does not exist: expected the "
                "checkpoint of an earlier run with the same --out"
            )
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
