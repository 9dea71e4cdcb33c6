"""Datasets of augmented views for contrastive hashing, and banks of pre-computed views.

* :class:`TwoViewDataset` draws two fresh augmentations of each image every time.
* :class:`ViewBank` draws ``E`` augmentations of every training image ONCE and keeps them
  (float16). Each epoch then picks two distinct stored views per image. With a frozen
  network the expensive forward pass over the bank can be cached too: backbone features for
  the teacher's linear probe (the reference teacher trains 200 epochs on a frozen ViT),
  or the frozen teacher's logits during distillation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm


class TwoViewDataset(Dataset):
    """``(view1, view2, index)`` for each image of ``source`` at ``indices``."""

    def __init__(self, source, indices: Sequence[int], view_transform: Callable):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.view_transform = view_transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img = self.source.load_image(int(self.indices[i]))
        return self.view_transform(img), self.view_transform(img), i


class EvalDataset(Dataset):
    """``(image_tensor, index)`` with a deterministic transform."""

    def __init__(self, source, indices: Sequence[int], transform: Callable):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.transform(self.source.load_image(int(self.indices[i]))), i


class ViewBank:
    """``E`` stored augmented views of each of ``N`` images: a tensor (N, E, C, H, W), float16."""

    def __init__(self, views: torch.Tensor):
        if views.ndim != 5 or views.shape[1] < 2:
            raise ValueError(
                f"a view bank needs shape (N, E>=2, C, H, W), got {tuple(views.shape)}"
            )
        self.views = views

    @classmethod
    def build(
        cls,
        source,
        indices: Sequence[int],
        view_transform: Callable,
        num_views: int,
        seed: int,
        progress: bool = True,
    ) -> ViewBank:
        if num_views < 2:
            raise ValueError(
                f"num_views={num_views} is not valid: a view bank needs at least 2 views per image"
            )
        state = torch.get_rng_state()
        torch.manual_seed(seed)  # torchvision's random transforms draw from torch's global RNG
        try:
            rows = []
            for i in tqdm(indices, desc="augmenting views", disable=not progress, leave=False):
                img = source.load_image(int(i))
                rows.append(torch.stack([view_transform(img) for _ in range(num_views)]).half())
        finally:
            torch.set_rng_state(state)
        return cls(torch.stack(rows))

    @property
    def num_images(self) -> int:
        return int(self.views.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.views.shape[1])

    def pick_pairs(self, generator: torch.Generator) -> torch.Tensor:
        """For every image, two distinct view numbers: LongTensor (N, 2)."""
        n, e = self.num_images, self.num_views
        first = torch.randint(0, e, (n,), generator=generator)
        second = (first + torch.randint(1, e, (n,), generator=generator)) % e
        return torch.stack([first, second], dim=1)

    @torch.no_grad()
    def map_views(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 256,
        progress: bool = True,
        desc: str = "caching",
    ) -> torch.Tensor:
        """Apply ``fn`` to every stored view: returns (N, E, ...) on the CPU."""
        flat = self.views.reshape(-1, *self.views.shape[2:])
        outs = []
        for s in tqdm(
            range(0, flat.shape[0], batch_size), desc=desc, disable=not progress, leave=False
        ):
            outs.append(fn(flat[s : s + batch_size].float()).float().cpu())
        out = torch.cat(outs)
        return out.reshape(self.num_images, self.num_views, *out.shape[1:])


class PairIndexDataset(Dataset):
    """Indices into a bank with the pair of view numbers chosen for this epoch."""

    def __init__(self, pairs: torch.Tensor):
        self.pairs = pairs

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def __getitem__(self, i: int):
        return i, self.pairs[i, 0], self.pairs[i, 1]
