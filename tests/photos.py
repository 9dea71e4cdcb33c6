"""A small generated photo folder for the tests of paths, ``serve --codes`` and ``hashkd add``.

No tests live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"cats": 5, "dogs": 4, "owls": 4}


def make_photos(
    root: Path,
    classes: dict[str, int] = CLASSES,
    size: int = 40,
    seed: int = 7,
    name: str = "img {:02d}.jpg",
) -> list[str]:
    """A folder of class sub-folders of small distinct JPEGs (names with a space); their
    paths relative to ``root`` in the order a folder dataset lists them, which is the order
    of the ids ``hashkd encode`` gives them."""
    rng = np.random.default_rng(seed)
    for label, count in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            blocks = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
            pixels = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
            Image.fromarray(pixels).save(root / label / name.format(i), quality=95)
    listed = []
    for label in sorted(os.listdir(root)):
        listed += [f"{label}/{f}" for f in sorted(os.listdir(root / label))]
    return listed
