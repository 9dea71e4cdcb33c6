"""hashkd.training.teacher_outputs: content keys, round trips, misses."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hashkd.data.transforms import eval_transform, train_transform
from hashkd.training.teacher_outputs import TeacherOutputs, images_digest, outputs_key


class _Images:
    """A source of images held as arrays (what the data layer's ``load_image`` hands over)."""

    def __init__(self, arrays):
        self.arrays = arrays

    def load_image(self, i):
        return Image.fromarray(self.arrays[i])


def _arrays(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(n)]


def test_images_digest_follows_pixels_shapes_and_order():
    arrays = _arrays()
    base = images_digest(_Images(arrays), np.arange(4))
    assert images_digest(_Images([a.copy() for a in arrays]), np.arange(4)) == base
    assert images_digest(_Images(arrays), np.array([1, 0, 2, 3])) != base
    assert images_digest(_Images(arrays), np.arange(3)) != base
    changed = [a.copy() for a in arrays]
    changed[2][0, 0, 0] ^= 1  # one bit of one pixel
    assert images_digest(_Images(changed), np.arange(4)) != base
    # the same bytes in another shape are other images
    reshaped = [a.reshape(5, 6, 3) for a in arrays]
    assert images_digest(_Images(reshaped), np.arange(4)) != base


def test_key_is_equal_for_equal_parts_and_differs_for_each_part():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    tf = train_transform(32, mean, std)
    parts = dict(num_views=4, seed=0)
    base = outputs_key("views", "t" * 64, "i" * 64, tf, **parts)
    assert outputs_key("views", "t" * 64, "i" * 64, train_transform(32, mean, std), **parts) == base
    others = [
        outputs_key("pool", "t" * 64, "i" * 64, tf, **parts),
        outputs_key("views", "u" * 64, "i" * 64, tf, **parts),
        outputs_key("views", "t" * 64, "j" * 64, tf, **parts),
        outputs_key("views", "t" * 64, "i" * 64, train_transform(24, mean, std), **parts),
        outputs_key("views", "t" * 64, "i" * 64, eval_transform(32, mean, std), **parts),
        outputs_key("views", "t" * 64, "i" * 64, tf, num_views=3, seed=0),
        outputs_key("views", "t" * 64, "i" * 64, tf, num_views=4, seed=1),
    ]
    assert len({base, *others}) == len(others) + 1


def test_round_trip_is_bit_exact_and_a_missing_folder_keeps_nothing(tmp_path):
    logits = torch.randn(5, 3, 16) * 1e-20  # tiny values survive: float32 stored as is
    store = TeacherOutputs(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return logits

    first, hit = store.get_or_compute("k1", compute, {"kind": "views"})
    again, hit_again = store.get_or_compute("k1", compute, {"kind": "views"})
    assert (hit, hit_again, len(calls)) == (False, True, 1)
    assert torch.equal(first, logits) and torch.equal(again, logits)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["k1.safetensors"]  # no temp file

    off = TeacherOutputs(None)
    for _ in range(2):
        out, hit = off.get_or_compute("k1", compute, {})
        assert not hit and torch.equal(out, logits)
    assert len(calls) == 3


def test_a_reader_does_not_write_and_a_broken_file_is_a_miss(tmp_path):
    store = TeacherOutputs(tmp_path)
    value = torch.ones(2, 8)
    _, hit = store.get_or_compute("k", lambda: value, {}, write=False)
    assert not hit and not any(tmp_path.iterdir())
    store.save("k", value, {})
    (tmp_path / "k.safetensors").write_bytes(b"not a safetensors file")
    assert store.load("k") is None
    out, hit = store.get_or_compute("k", lambda: value * 2, {})
    assert not hit and torch.equal(store.load("k"), value * 2)
