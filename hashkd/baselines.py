"""Reference points for benchmarks: random-hyperplane LSH on raw pixels.

Charikar, "Similarity estimation techniques from rounding algorithms" (STOC 2002): for
x in R^d and w ~ N(0, I_d), P[sign(w.x) != sign(w.y)] = angle(x, y) / pi, so K random
hyperplanes give codes whose Hamming distance estimates the angle. Pixels are centred on
the training mean first, otherwise every image lies in one orthant and most bits agree.
"""

from __future__ import annotations

import numpy as np

from hashkd.codes import check_bits


class PixelLSH:
    """``bits`` random hyperplanes through the mean of ``train`` pixel vectors (seeded)."""

    def __init__(self, bits: int, seed: int = 0):
        self.bits = check_bits(bits)
        self.seed = int(seed)
        self.mean: np.ndarray | None = None
        self.planes: np.ndarray | None = None

    def fit(self, train_pixels: np.ndarray) -> PixelLSH:
        x = np.asarray(train_pixels, dtype=np.float32).reshape(len(train_pixels), -1)
        self.mean = x.mean(axis=0)
        rng = np.random.default_rng(self.seed)
        self.planes = rng.standard_normal((x.shape[1], self.bits)).astype(np.float32)
        return self

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if self.planes is None or self.mean is None:
            raise ValueError(
                "PixelLSH.encode was called before fit: expected fit(train_pixels) first"
            )
        x = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
        if x.shape[1] != self.planes.shape[0]:
            raise ValueError(
                f"pixel vectors have {x.shape[1]} values: expected {self.planes.shape[0]} as in fit"
            )
        return np.packbits((x - self.mean) @ self.planes > 0, axis=1)
