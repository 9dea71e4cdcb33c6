"""Datasets of augmented views for contrastive hashing, and banks of pre-computed views.

* :class:`TwoViewDataset` draws two fresh augmentations of each image every time.
* :class:`ViewBank` draws ``E`` augmentations of every training image ONCE and keeps them
  (float16). Each epoch then picks two distinct stored views per image. With a frozen
  network the expensive forward pass over the bank can be cached too: backbone features for
  the teacher's linear probe (the reference teacher trains 200 epochs on a frozen ViT),
  or the frozen teacher's logits during distillation.
* :class:`StreamedViewBank` is the same bank for pools too large to hold as tensors: view
  ``e`` of image ``i`` is drawn with its own seed (:func:`view_seed`), so it can be drawn
  again, identical, whenever it is needed. Only the frozen network's packed codes of the
  ``N x E`` views are kept; images stream from disk through a DataLoader every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hashkd.codes import codes_to_signs, pack_codes


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


def pick_view_pairs(num_images: int, num_views: int, generator: torch.Generator) -> torch.Tensor:
    """For every image, two distinct view numbers in ``[0, num_views)``: LongTensor (N, 2)."""
    first = torch.randint(0, num_views, (num_images,), generator=generator)
    second = (first + torch.randint(1, num_views, (num_images,), generator=generator)) % num_views
    return torch.stack([first, second], dim=1)


#: How :meth:`ViewBank.build` draws its views (torch's global generator seeded once, then the
#: images in order, ``E`` views each); part of the cache key of the bank's teacher outputs.
BANK_SEEDING = "torch.manual_seed(seed), images in order, E views each, v1"


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
        return pick_view_pairs(self.num_images, self.num_views, generator)

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


#: How :func:`view_seed` derives a view's seed; part of every cache key of coded views
#: (:mod:`hashkd.training.teacher_outputs`), so a change here must change this name.
VIEW_SEEDING = "SeedSequence([seed, image, view]) v1"


def view_seed(seed: int, image: int, view: int) -> int:
    """The seed of view ``view`` of image ``image`` (a 63-bit value mixed by SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(image), int(view)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededViews:
    """View ``e`` of image ``i`` of ``source`` drawn with its own seed: the same tensor every time.

    torchvision's random transforms draw from torch's global CPU generator; each view is drawn
    inside :func:`torch.random.fork_rng` with that generator seeded with :func:`view_seed`
    ``(seed, source index, e)``, so the caller's generators (CPU and accelerators) are
    untouched and the view depends on nothing else (not the batch, not the DataLoader worker,
    not the epoch).
    """

    def __init__(self, source, indices: Sequence[int], view_transform: Callable, seed: int):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.view_transform = view_transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def views(self, i: int, numbers: Sequence[int]) -> list[torch.Tensor]:
        """Views ``numbers`` of image ``i`` (position in ``indices``); the image is read once."""
        image_id = int(self.indices[i])
        img = self.source.load_image(image_id)
        out = []
        for e in numbers:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also (re)seed every
                # accelerator's generator, which fork_rng(devices=[]) does not restore, and
                # costs ~0.2 ms a view
                torch.default_generator.manual_seed(view_seed(self.seed, image_id, int(e)))
                out.append(self.view_transform(img))
        return out


class _AllViews(Dataset):
    """``(E x C x H x W views, i)`` for coding the bank."""

    def __init__(self, views: SeededViews, num_views: int):
        self.seeded, self.num_views = views, num_views

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, i: int):
        return torch.stack(self.seeded.views(i, range(self.num_views))), i


class StreamedPairDataset(Dataset):
    """``(view a, view b, i, a, b)`` for each image ``i`` with the pair ``(a, b)`` of this epoch."""

    def __init__(self, views: SeededViews, pairs: torch.Tensor):
        if pairs.shape != (len(views), 2):
            raise ValueError(
                f"pairs of shape {tuple(pairs.shape)} do not fit {len(views)} images: expected (N, 2)"
            )
        self.seeded, self.pairs = views, pairs

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, i: int):
        a, b = int(self.pairs[i, 0]), int(self.pairs[i, 1])
        x1, x2 = self.seeded.views(i, (a, b))
        return x1, x2, i, a, b


class StreamedViewBank:
    """A view bank that keeps only a frozen network's codes of the views, never the images.

    ``E`` seeded views per image (:class:`SeededViews`); :meth:`code` streams them through a
    DataLoader once and keeps the packed codes ``(N, E, K/8)`` uint8 (bit 1 where the logit is
    > 0, :func:`hashkd.codes.pack_codes`): 50,000 images x 4 views x 64 bits take 1.6 MB.
    Each epoch, :meth:`epoch_dataset` streams the two chosen views of every image again,
    identical to the ones coded.
    """

    def __init__(
        self, source, indices: Sequence[int], view_transform: Callable, num_views: int, seed: int
    ):
        if num_views < 2:
            raise ValueError(
                f"num_views={num_views} is not valid: a view bank needs at least 2 views per image"
            )
        self.views = SeededViews(source, indices, view_transform, seed)
        self.num_views = int(num_views)
        self.codes: np.ndarray | None = None
        self.logits: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return len(self.views)

    @torch.no_grad()
    def code(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 256,
        num_workers: int = 0,
        progress: bool = True,
        desc: str = "coding the view bank",
        keep_logits: bool = False,
    ) -> np.ndarray:
        """Run ``fn`` (views -> N x K logits) over every view once; keeps and returns the codes.

        ``keep_logits`` also keeps the logits themselves, float32 ``(N, E, K)`` (50,000 images x
        4 views x 64 bits: 51 MB), for losses that distil the teacher's continuous outputs
        (:meth:`outputs`)."""
        loader = DataLoader(
            _AllViews(self.views, self.num_views),
            batch_size=max(1, batch_size // self.num_views),
            shuffle=False,
            num_workers=num_workers,
        )
        rows, kept = [], []
        for x, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
            logits = fn(x.reshape(-1, *x.shape[2:])).float()
            rows.append(pack_codes(logits).reshape(x.shape[0], self.num_views, -1))
            if keep_logits:
                kept.append(logits.cpu().reshape(x.shape[0], self.num_views, -1))
        self.codes = np.concatenate(rows)
        self.logits = torch.cat(kept) if keep_logits else None
        return self.codes

    def use_logits(self, logits: torch.Tensor, keep_logits: bool = False) -> np.ndarray:
        """Take the teacher's logits ``(N, E, K)`` of these views, coded earlier (e.g. read back
        from :class:`~hashkd.training.teacher_outputs.TeacherOutputs`), instead of :meth:`code`."""
        expected = (self.num_images, self.num_views)
        if logits.ndim != 3 or tuple(logits.shape[:2]) != expected:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} do not fit {expected[0]} images x "
                f"{expected[1]} views: expected (N, E, K)"
            )
        flat = logits.float().reshape(-1, logits.shape[2])
        self.codes = pack_codes(flat).reshape(expected[0], expected[1], -1)
        self.logits = logits.float() if keep_logits else None
        return self.codes

    def pick_pairs(self, generator: torch.Generator) -> torch.Tensor:
        """For every image, two distinct view numbers: LongTensor (N, 2)."""
        return pick_view_pairs(self.num_images, self.num_views, generator)

    def epoch_dataset(self, pairs: torch.Tensor) -> StreamedPairDataset:
        return StreamedPairDataset(self.views, pairs)

    def signs(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """±1 float codes (B x K) of views ``view`` of images ``index``."""
        if self.codes is None:
            raise RuntimeError("the view bank has no codes yet: call code() first")
        return torch.from_numpy(codes_to_signs(self.codes[index.numpy(), view.numpy()]))

    def outputs(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The kept logits (B x K) of views ``view`` of images ``index`` (``code(keep_logits=True)``)."""
        if self.logits is None:
            raise RuntimeError("the view bank kept no logits: call code(keep_logits=True) first")
        return self.logits[index.long(), view.long()]
