"""How big and how costly a model is: parameters and FLOPs of one forward pass, and measured
images per second.

FLOPs are counted by PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts matrix multiplications, convolutions and attention at 2 FLOPs per multiply-add
(a ``Linear(a, b)`` on one vector is ``2ab`` FLOPs, biases not counted). Normalisation,
activations, pooling and element-wise additions are not counted: they are a small share of
any backbone and add no multiply-adds. CPU attention (``scaled_dot_product_attention``'s
CPU kernel) is counted with the same formula PyTorch uses for its GPU kernels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "artifact_cost",
    "count_flops",
    "count_parameters",
    "encode_images_per_second",
    "images_per_second",
    "model_cost",
]


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    """Ops FlopCounterMode does not know: the CPU flash-attention kernel."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_flops} if op is not None else {}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


@torch.no_grad()
def count_flops(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """FLOPs of one forward pass on one ``in_chans x img_size x img_size`` image (eval mode)."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size={img_size!r} is not valid: expected a positive integer")
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.zeros(1, in_chans, img_size, img_size, device=device)
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module) -> dict[str, Any]:
    """Parameters and FLOPs of a hash model at its own input size (``model.config.img_size``).

    ``{"params", "backbone_params", "flops", "img_size"}``; ``backbone_params`` is omitted for
    a model without a ``backbone`` attribute.
    """
    img_size = int(model.config.img_size)
    out: dict[str, Any] = {
        "params": count_parameters(model),
        "flops": count_flops(model, img_size),
        "img_size": img_size,
    }
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        out["backbone_params"] = count_parameters(backbone)
    return out


def artifact_cost(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`model_cost` of a model artifact directory (``config.json`` + weights)."""
    from hashkd.models.artifact import load_artifact

    return model_cost(load_artifact(directory))


def images_per_second(step: Callable[[], object], batch: int, seconds: float) -> float:
    """Measured throughput of ``step``, one call of which handles ``batch`` images: one warm-up
    call (allocations, kernel choice), then as many calls as fit in ``seconds`` of wall time."""
    if batch < 1 or seconds < 0:
        raise ValueError(
            f"batch={batch}, seconds={seconds} is not valid: expected batch >= 1, seconds >= 0"
        )
    step()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += batch
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0)


def encode_images_per_second(model: nn.Module, batch: int = 64, seconds: float = 3.0) -> float:
    """Encode throughput of a hash model (eval mode, no autograd) on random images at its own
    input size (``model.config.img_size``); the mode the model was in is restored."""
    img_size = int(model.config.img_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    was_training = model.training
    model.eval()

    def step() -> None:
        with torch.no_grad():
            model(x)

    try:
        return images_per_second(step, batch, seconds)
    finally:
        model.train(was_training)
