"""Image transforms: the two-view training augmentation of CIBHash/BRCD and a deterministic eval path.

Training (CIBHash, Qiu et al. IJCAI 2021; BRCD, WWW 2024; after SimCLR, Chen et al. 2020):
every image gives two views, each drawn independently from

    RandomResizedCrop(img_size, scale=(0.5, 1))  -> RandomHorizontalFlip(0.5)
    -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.7 -> RandomGrayscale(0.2)
    -> ToTensor -> GaussianBlur(kernel k, sigma in [0.1, 2]) with p=0.5 -> Normalize(mean, std)

The blur kernel scales with the image: ``k`` = the odd integer nearest ``img_size / 10``
(at least 3): 3 at 32 px, 7 at 64 px, 23 at 224 px (the reference setting). Crops are
relative areas, so they scale with the image by construction.

Evaluation: ``Resize((img_size, img_size))`` (bilinear, antialiased; the whole image is kept,
squeezed to a square) -> ToTensor -> Normalize(mean, std). Take ``mean``/``std``/``img_size``
from the model artifact's ``config.json``.

Randomness comes from torch's global generator (torchvision transforms): DataLoader workers
seed it per worker from the loader's generator (see :func:`hashkd.data.make_loader`); with
``num_workers=0`` call ``torch.manual_seed(seed)`` for reproducible augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

# ImageNet statistics (the timm default); the model's config.json records the ones it used.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def blur_kernel_size(img_size: int) -> int:
    """Odd Gaussian-blur kernel nearest to 10% of the image side, at least 3 (224 px -> 23)."""
    return max(3, int(round(img_size / 10)) | 1)


def _check(
    img_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 8:
        raise ValueError(
            f"img_size={img_size!r} is not valid: expected an integer of at least 8 pixels"
        )
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(
            f"mean={mean!r} / std={std!r} are not valid: expected three values each (RGB)"
        )
    if min(std_t) <= 0:
        raise ValueError(f"std={std!r} is not valid: expected three positive values")
    return img_size, mean_t, std_t


def train_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.7,
    gray_p: float = 0.2,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    blur_p: float = 0.5,
) -> T.Compose:
    """One random view of a PIL image as a normalised ``3 x img_size x img_size`` tensor (module docstring)."""
    img_size, mean_t, std_t = _check(img_size, mean, std)
    return T.Compose(
        [
            T.RandomResizedCrop(
                img_size,
                scale=crop_scale,
                interpolation=T.InterpolationMode.BILINEAR,
                antialias=True,
            ),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p),
            T.RandomGrayscale(p=gray_p),
            # Blur the float tensor: cheaper than torchvision's PIL path (PIL -> tensor -> PIL).
            T.ToTensor(),
            T.RandomApply([T.GaussianBlur(blur_kernel_size(img_size), sigma=blur_sigma)], p=blur_p),
            T.Normalize(mean_t, std_t),
        ]
    )


class TwoViewTransform:
    """Apply a random transform twice to the same image: ``img -> (view1, view2)``.

    A DataLoader over a dataset with this transform yields batches ``((v1, v2), labels, idx)``
    with ``v1``/``v2`` of shape ``B x 3 x H x W``.
    """

    def __init__(self, transform: Callable[[Image.Image], Any]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> tuple[Any, Any]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"TwoViewTransform({self.transform!r})"


def two_view_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **kwargs: Any,
) -> TwoViewTransform:
    """:class:`TwoViewTransform` of :func:`train_transform` (keyword options are passed through)."""
    return TwoViewTransform(train_transform(img_size, mean, std, **kwargs))


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic: resize to ``img_size x img_size`` (bilinear, antialiased), ToTensor, Normalize."""
    img_size, mean_t, std_t = _check(img_size, mean, std)
    return T.Compose(
        [
            T.Resize(
                (img_size, img_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True
            ),
            T.ToTensor(),
            T.Normalize(mean_t, std_t),
        ]
    )


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo Normalize (for looking at augmented views): ``x * std + mean``, clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x * s + m).clamp(0, 1)
