import numpy as np

from hashkd.baselines import PixelLSH
from hashkd.codes import hamming_distances


def test_pixel_lsh_matches_hand_projection_and_estimates_angles(rng):
    train = rng.standard_normal((200, 48)).astype(np.float32)
    lsh = PixelLSH(bits=256, seed=3).fit(train)
    x = rng.standard_normal((2, 48)).astype(np.float32)
    codes = lsh.encode(x)
    planes = np.random.default_rng(3).standard_normal((48, 256)).astype(np.float32)
    expected = np.packbits((x - train.mean(0)) @ planes > 0, axis=1)
    assert np.array_equal(codes, expected)
    # Charikar: E[hamming / K] = angle / pi
    a, b = x - train.mean(0)
    angle = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert abs(hamming_distances(codes[:1], codes[1:])[0, 0] / 256 - angle / np.pi) < 0.1
