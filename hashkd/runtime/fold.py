"""Folding of purely linear heads: ``Linear -> (Identity | Dropout)* -> Linear`` into one Linear.

Two affine maps compose into one: ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``. A head
with no non-linearity between its linear layers (``head='linear2'``) therefore costs one
matrix product at inference instead of two. Dropout is the identity in evaluation mode, so
the folded module is for inference only.
"""

from __future__ import annotations

import torch
from torch import nn

_PASSTHROUGH = (nn.Identity, nn.Dropout)


def merge_linear(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` equal to ``second(first(x))`` (computed in float64, then cast back)."""
    if second.in_features != first.out_features:
        raise ValueError(
            f"cannot merge Linear({first.in_features}->{first.out_features}) with "
            f"Linear({second.in_features}->{second.out_features}): inner sizes differ"
        )
    dtype, device = second.weight.dtype, second.weight.device
    with torch.no_grad():
        w1, w2 = first.weight.double(), second.weight.double()
        weight = w2 @ w1
        bias = torch.zeros(second.out_features, dtype=torch.float64, device=device)
        if first.bias is not None:
            bias = bias + w2 @ first.bias.double()
        if second.bias is not None:
            bias = bias + second.bias.double()
        out = nn.Linear(
            first.in_features, second.out_features, bias=True, device=device, dtype=dtype
        )
        out.weight.copy_(weight.to(dtype))
        out.bias.copy_(bias.to(dtype))
    return out


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _flatten(child)]
    return [module]


def fold_linear_head(module: nn.Module) -> nn.Module:
    """Merge every run of linear layers (with only Identity/Dropout between them) of a head.

    ``module`` is left unchanged; the result shares the layers it did not merge. A
    ``Sequential`` reduced to one layer is returned as that layer; anything that is not a
    ``Sequential`` (a single Linear, an MLP's ReLU block) is returned as is.
    """
    if not isinstance(module, nn.Sequential):
        return module
    layers: list[nn.Module] = []
    for layer in _flatten(module):
        if isinstance(layer, _PASSTHROUGH):
            continue
        if isinstance(layer, nn.Linear) and layers and isinstance(layers[-1], nn.Linear):
            layers[-1] = merge_linear(layers[-1], layer)
        else:
            layers.append(layer)
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)
