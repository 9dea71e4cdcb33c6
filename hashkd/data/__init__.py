"""Data layer: image datasets, seeded class-balanced splits and protocols, transforms, loaders.

Typical training-side use::

    from hashkd.data import load_dataset, make_splits, two_view_transform, eval_transform, make_loader

    ds = load_dataset("cifar10")                       # or "digits", a folder, a list file
    splits = make_splits("cifar10-cpu", ds, seed=0)    # train / val / query / database views
    train = splits["train"].with_transform(two_view_transform(32, mean, std))
    loader = make_loader(train, batch_size=64, shuffle=True, seed=0, drop_last=True)
    for (v1, v2), labels, idx in loader: ...
    meta = splits.meta                                 # protocol, seed, sizes -> write to outputs

Image files are decoded once, with unreadable ones skipped, and kept at a working resolution
in memory or on disk; ``use_data_options(cache=..., strict=..., img_size=...)`` sets how
(:mod:`hashkd.data.cache`). See docs/data.md and docs/CONTRACTS.md.
"""

from hashkd.data.cache import (
    CACHE_MODES,
    DataOptions,
    SkipReport,
    current_options,
    use_data_options,
    working_side,
)
from hashkd.data.datasets import (
    IMG_EXTENSIONS,
    ArrayDataset,
    DatasetView,
    DigitsDataset,
    FileDataset,
    FolderDataset,
    ImageDataset,
    ListFileDataset,
    SplitFolderDataset,
)
from hashkd.data.load import cifar10_root, load_dataset
from hashkd.data.loader import make_loader, seed_worker
from hashkd.data.splits import (
    PROTOCOLS,
    Protocol,
    Splits,
    class_balanced_split,
    get_protocol,
    make_splits,
    primary_class,
)
from hashkd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewTransform,
    blur_kernel_size,
    denormalize,
    eval_transform,
    train_transform,
    two_view_transform,
)

__all__ = [
    "CACHE_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "PROTOCOLS",
    "ArrayDataset",
    "DataOptions",
    "DatasetView",
    "DigitsDataset",
    "FileDataset",
    "FolderDataset",
    "ImageDataset",
    "ListFileDataset",
    "Protocol",
    "SkipReport",
    "SplitFolderDataset",
    "Splits",
    "TwoViewTransform",
    "blur_kernel_size",
    "cifar10_root",
    "class_balanced_split",
    "current_options",
    "denormalize",
    "eval_transform",
    "get_protocol",
    "load_dataset",
    "make_loader",
    "make_splits",
    "primary_class",
    "seed_worker",
    "train_transform",
    "two_view_transform",
    "use_data_options",
    "working_side",
]
