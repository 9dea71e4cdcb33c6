"""Shared pytest fixtures: offline timm, few threads, tiny models and images."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = (REPO / ".." / "shared" / "data" / "cifar10").resolve()

# A ViT small enough for CPU tests (img_size=32, patch_size=4).
TINY_VIT = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2},
}
TINY_CNN = {"backbone": "resnet10t", "backbone_kwargs": {}}


def save_tiny_teacher(path: Path, bits: int = 16, img_size: int = 16) -> Path:
    """A random-init TINY_VIT teacher artifact (seed 0) at ``path``, for distillation tests."""
    import torch

    from hashkd.models import ModelConfig, build_model, save_artifact

    torch.manual_seed(0)
    save_artifact(build_model(ModelConfig(bits=bits, img_size=img_size, **TINY_VIT)), path)
    return path


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / "train").is_dir():
        pytest.skip(f"CIFAR-10 images not found at {CIFAR10_DIR}")
    return CIFAR10_DIR
