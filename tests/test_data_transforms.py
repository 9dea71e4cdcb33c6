"""Two-view augmentation, eval transform and the seeded DataLoader helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from hashkd.data import (
    ArrayDataset,
    TwoViewTransform,
    blur_kernel_size,
    eval_transform,
    make_loader,
    train_transform,
    two_view_transform,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def image(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture
def tiny(rng: np.random.Generator) -> ArrayDataset:
    ids = np.repeat(np.arange(4), 6)
    labels = np.eye(4, dtype=np.uint8)[ids]
    return ArrayDataset(rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), labels, "abcd")


def test_blur_kernel_scales_with_image_size() -> None:
    assert [blur_kernel_size(s) for s in (8, 32, 64, 96, 224)] == [3, 3, 7, 11, 23]
    for size in (32, 224):
        blur = [t for t in train_transform(size).transforms if isinstance(t, T.RandomApply)][
            1
        ].transforms[0]
        assert isinstance(blur, T.GaussianBlur)
        assert tuple(blur.kernel_size) == (blur_kernel_size(size),) * 2 and blur.sigma == (0.1, 2.0)


def test_two_views_differ_and_have_the_right_shape(image: Image.Image) -> None:
    tv = two_view_transform(32, MEAN, STD)
    assert isinstance(tv, TwoViewTransform)
    torch.manual_seed(0)
    v1, v2 = tv(image)
    assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    torch.manual_seed(0)
    w1, w2 = tv(image)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # torch's seed drives the augmentation
    big1, big2 = two_view_transform(64)(image)
    assert big1.shape == big2.shape == (3, 64, 64)


def test_train_transform_without_randomness_is_the_normalised_image(image: Image.Image) -> None:
    # Crop scale 1 at ratio 1 keeps the whole square image; every random op switched off but the flip.
    t = train_transform(32, MEAN, STD, crop_scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    t.transforms[0].ratio = (1.0, 1.0)
    expected = (np.asarray(image, dtype=np.float32) / 255 - MEAN) / STD
    expected = torch.from_numpy(expected.transpose(2, 0, 1).astype(np.float32))
    for seed in range(6):
        torch.manual_seed(seed)
        out = t(image)
        assert torch.allclose(out, expected, atol=1e-5) or torch.allclose(
            out, expected.flip(-1), atol=1e-5
        )


def test_eval_transform_is_deterministic_and_normalises(image: Image.Image) -> None:
    t = eval_transform(32, MEAN, STD)
    a, b = t(image), t(image)
    assert torch.equal(a, b)
    # Oracle: at the native size the transform is (pixels / 255 - mean) / std, channels first.
    expected = (np.asarray(image, dtype=np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(a.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert eval_transform(48)(image.resize((20, 30))).shape == (3, 48, 48)
    with pytest.raises(ValueError, match="img_size=4"):
        eval_transform(4)
    with pytest.raises(ValueError, match="std="):
        eval_transform(32, MEAN, (0.1, 0.0, 0.2))


def _order(loader: torch.utils.data.DataLoader) -> list[int]:
    return torch.cat([idx for _, _, idx in loader]).tolist()


def test_loader_batches_two_views_and_shuffles_by_seed(tiny: ArrayDataset) -> None:
    ds = tiny.with_transform(two_view_transform(8))
    loader = make_loader(ds, batch_size=5, shuffle=True, seed=1, drop_last=True)
    (v1, v2), labels, idx = next(iter(loader))
    assert (
        v1.shape == v2.shape == (5, 3, 8, 8)
        and labels.shape == (5, 4)
        and labels.dtype == torch.uint8
    )
    np.testing.assert_array_equal(labels.numpy(), tiny.labels[idx.numpy()])
    assert len(loader) == 4 and sum(len(b[2]) for b in loader) == 20
    evals = tiny.with_transform(eval_transform(8))
    first = _order(make_loader(evals, 4, shuffle=True, seed=1))
    assert sorted(first) == list(range(24))
    assert first == _order(make_loader(evals, 4, shuffle=True, seed=1))
    assert first != _order(make_loader(evals, 4, shuffle=True, seed=2))
    loader = make_loader(evals, 4, shuffle=True, seed=1)
    assert _order(loader) != _order(loader)  # a new permutation each epoch
    assert _order(make_loader(evals, 4)) == list(range(24))


def test_loader_workers_are_seeded(tiny: ArrayDataset) -> None:
    ds = tiny.with_transform(two_view_transform(8))

    def views(seed: int) -> torch.Tensor:
        loader = make_loader(ds, batch_size=8, shuffle=False, seed=seed, num_workers=1)
        return torch.cat([v1 for (v1, _), _, _ in loader])

    a = views(5)
    assert torch.equal(a, views(5))
    assert not torch.equal(a, views(6))


def test_distributed_sampler_partitions_and_follows_epochs(tiny: ArrayDataset) -> None:
    ds = tiny.with_transform(eval_transform(8))
    ranks = [
        make_loader(ds, 3, shuffle=True, seed=0, distributed=True, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    orders = [_order(lo) for lo in ranks]
    assert len(orders[0]) == len(orders[1]) == 12
    assert sorted(orders[0] + orders[1]) == list(range(24))
    assert _order(ranks[0]) == orders[0]  # same epoch, same order
    ranks[0].sampler.set_epoch(1)
    assert _order(ranks[0]) != orders[0]


def test_loader_rejects_bad_arguments(tiny: ArrayDataset) -> None:
    with pytest.raises(ValueError, match="no transform"):
        make_loader(tiny, 4)
    ds = tiny.with_transform(eval_transform(8))
    with pytest.raises(ValueError, match="batch_size=0"):
        make_loader(ds, 0)
    with pytest.raises(ValueError, match="num_workers=-1"):
        make_loader(ds, 2, num_workers=-1)
