"""Pairwise geometry of a batch that stays finite when rows coincide.

Straight-through ±1 codes (``p + (sign - p).detach()``) make duplicate rows common: two
images with the same code give ``x_j - x_i`` equal to zero, or to float rounding of about
1e-7. Normalising that difference (``F.normalize`` divides by ``max(norm, 1e-12)``) or
taking the square root of a clamped squared distance scales the gradient by up to 1e12.
The helpers here treat such pairs as *coincident*: their distance is exactly 0, their unit
difference is the zero vector, and no gradient flows through either.

A pair is coincident when ``||x_i - x_j|| <= rtol * max|x|`` (``rtol`` 1e-4): far above
rounding, far below the distance 2 between two distinct ±1 codes.
"""

from __future__ import annotations

import torch

COINCIDENT_RTOL = 1e-4


def pairwise_differences(x: torch.Tensor) -> torch.Tensor:
    """``diff[i, j] = x_j - x_i``, a B x B x d tensor (exact, no expanded-square cancellation)."""
    return x.unsqueeze(0) - x.unsqueeze(1)


def coincidence_tolerance(x: torch.Tensor, rtol: float = COINCIDENT_RTOL) -> float:
    """Distance below which two rows of ``x`` count as the same point."""
    scale = float(x.detach().abs().max()) if x.numel() else 0.0
    return rtol * scale if scale > 0 else 1e-12


def _safe_norms(diff: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms of the last axis and the mask of non-coincident entries, gradient-safe at 0."""
    squared = (diff * diff).sum(dim=-1)
    distinct = squared.detach() > tol * tol
    # clamp before sqrt: the square root's slope stays below 1 / (2 tol), and is 0 under it
    norms = squared.clamp(min=tol * tol).sqrt()
    return norms, distinct


def pairwise_distances(x: torch.Tensor, rtol: float = COINCIDENT_RTOL) -> torch.Tensor:
    """B x B Euclidean distances; exactly 0, with no gradient, for coincident pairs."""
    norms, distinct = _safe_norms(pairwise_differences(x), coincidence_tolerance(x, rtol))
    return norms * distinct.to(norms.dtype)


def unit_differences(
    x: torch.Tensor, rtol: float = COINCIDENT_RTOL
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e, distinct)``: ``e[i, j] = (x_j - x_i) / ||x_j - x_i||`` (B x B x d) and the
    B x B mask of pairs that are not coincident; ``e[i, j] = 0`` with no gradient where
    the mask is False (the diagonal and duplicate rows)."""
    diff = pairwise_differences(x)
    norms, distinct = _safe_norms(diff, coincidence_tolerance(x, rtol))
    e = diff * (distinct.to(diff.dtype) / norms).unsqueeze(-1)
    return e, distinct
