"""Code-set diagnostics (hashkd.metrics.code_health) against hand-worked values and a brute force."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hashkd.codes import pack_codes
from hashkd.metrics import code_health, collapse_warning, worst_health


def test_hand_worked_codes():
    bits = np.array([[1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1]])
    h = code_health(np.packbits(bits.astype(np.uint8), axis=1))
    assert h["num_codes"] == 3 and h["distinct_codes"] == 2
    assert h["largest_bucket_fraction"] == pytest.approx(2 / 3)
    # shares of ones per bit: 2/3, 0, 2/3, 0, 2/3, 0, 2/3, 1/3 -> |p - 0.5|
    expected = np.mean([1 / 6, 0.5, 1 / 6, 0.5, 1 / 6, 0.5, 1 / 6, 1 / 6])
    assert h["bit_balance"] == pytest.approx(expected)
    # two of the three items share one code: more than a quarter in one bucket
    assert h["collapsed"] and "66.7% of them in one bucket" in collapse_warning(h)
    # effective codes: exp(-(2/3 ln 2/3 + 1/3 ln 1/3)) = 1.8899
    assert h["effective_codes"] == pytest.approx(1.889882, abs=1e-6)
    # four different codes: exactly a quarter in the largest bucket is not collapse
    four = np.array(
        [[1, 0, 1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0], [1] * 8]
    )
    h = code_health(np.packbits(four.astype(np.uint8), axis=1))
    assert h["largest_bucket_fraction"] == 0.25 and h["distinct_codes"] == 4
    assert h["effective_codes"] == pytest.approx(4.0, abs=1e-9)
    assert not h["collapsed"] and collapse_warning(h) is None and h["collapse_reasons"] == []


def test_degraded_codes_29_distinct_with_44_percent_in_one_bucket_are_collapsed():
    """The shape of the digits no-KD student: 29 distinct codes on 1,000 items (above the 1%
    rule) with 440 of them in one bucket."""
    rng = np.random.default_rng(1)
    distinct = np.unique(rng.integers(0, 2, size=(200, 32), dtype=np.uint8), axis=0)[:29]
    sizes = [440] + [20] * 28  # 440 + 560 = 1,000
    codes = np.packbits(np.repeat(distinct, sizes, axis=0), axis=1)
    h = code_health(codes)
    assert h["distinct_codes"] == 29 and h["largest_bucket_fraction"] == 0.44
    assert h["collapsed"] and h["collapse_reasons"] == ["more than 25% of the items in one bucket"]
    assert "44.0% of them in one bucket" in collapse_warning(h)


def test_a_few_large_buckets_behind_many_singletons_are_collapsed():
    """5 buckets of 18% each and 1,000 singletons (10%) in 10,000 items: distinct codes 1,005
    (10%), largest bucket 18%, but only exp(H) = 11.7 effective codes (< 1% = 100)."""
    rng = np.random.default_rng(2)
    codes = np.packbits(rng.integers(0, 2, size=(10_000, 64), dtype=np.uint8), axis=1)
    for b in range(5):
        codes[b * 1800 : (b + 1) * 1800] = codes[b * 1800]
    h = code_health(codes)
    share = np.array([0.18] * 5 + [1e-4] * 1000)
    assert h["distinct_codes"] == 1005 and h["largest_bucket_fraction"] == 0.18
    want = float(np.exp(-(share * np.log(share)).sum()))
    assert h["effective_codes"] == pytest.approx(want, abs=1e-6) and 11 < want < 12
    assert h["collapse_reasons"] == ["fewer effective codes than 1% of the items"]


def test_worst_health_is_the_collapsed_or_least_diverse_seed():
    rng = np.random.default_rng(4)
    healthy = code_health(pack_codes(rng.standard_normal((1000, 16))))
    narrow = pack_codes(rng.standard_normal((1000, 16)))
    narrow[:200] = narrow[0]  # 20% in one bucket: fewer effective codes, not collapsed
    narrow_h = code_health(narrow)
    collapsed = code_health(np.full((1000, 2), 7, dtype=np.uint8))
    assert not narrow_h["collapsed"] and narrow_h["effective_codes"] < healthy["effective_codes"]
    assert worst_health([healthy, narrow_h]) == (1, narrow_h)
    assert worst_health([healthy, collapsed, narrow_h]) == (1, collapsed)
    with pytest.raises(ValueError, match="no code health"):
        worst_health([])


def test_one_dominant_bucket_is_collapse_even_with_many_distinct_codes():
    """156 distinct codes for 1,000 items is above the 1% rule, but 845 items in one bucket
    (the shape of a 64-bit lsh student on CIFAR-10: 98% in one bucket) is a collapsed set."""
    rng = np.random.default_rng(0)
    codes = np.packbits(rng.integers(0, 2, size=(1000, 64), dtype=np.uint8), axis=1)
    codes[:845] = codes[0]
    h = code_health(codes)
    assert h["distinct_codes"] == 156 and h["largest_bucket_fraction"] == 0.845
    assert h["collapsed"] and "84.5% of them in one bucket" in collapse_warning(h)


def test_constant_codes_are_collapsed():
    codes = np.full((500, 4), 0b10110010, dtype=np.uint8)
    h = code_health(codes)
    assert h["distinct_codes"] == 1 and h["largest_bucket_fraction"] == 1.0
    assert h["bit_balance"] == 0.5 and h["collapsed"]
    assert "1 distinct codes for 500 items" in collapse_warning(h, "student codes")


def test_matches_brute_force_on_random_tie_heavy_codes():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((7, 32))
    real = base[rng.integers(0, 7, size=2000)]  # 7 distinct codes for 2,000 items
    codes = pack_codes(real)
    h = code_health(codes)
    counts = Counter(map(bytes, codes))
    assert h["distinct_codes"] == len(counts)
    assert h["largest_bucket_fraction"] == max(counts.values()) / 2000
    assert h["collapsed"]  # 7 < 1% of 2,000
    assert "fewer distinct codes than 1% of the items" in h["collapse_reasons"]
    p = (real > 0).mean(axis=0)
    assert h["bit_balance"] == pytest.approx(np.abs(p - 0.5).mean())


def test_healthy_random_codes_and_empty_input():
    codes = pack_codes(np.random.default_rng(0).standard_normal((1000, 64)))
    h = code_health(codes)
    assert h["distinct_codes"] == 1000 and not h["collapsed"] and h["bit_balance"] < 0.05
    with pytest.raises(ValueError, match="no codes"):
        code_health(np.zeros((0, 8), dtype=np.uint8))


@pytest.mark.parametrize(
    "values, digits, text",
    [
        ([0.1, 0.3], 4, "0.2000 ± 0.1414"),  # sample std: sqrt(((0.1)^2 + (0.1)^2) / 1)
        ([1.0, None, 3.0], 1, "2.0 ± 1.4"),  # None (not measured) is left out
        ([0.5], 4, "0.5000"),  # one seed: no spread is claimed
        ([], 4, "-"),
        ([None], 2, "-"),
    ],
)
def test_mean_std_text_by_hand(values, digits, text):
    from hashkd.metrics import mean_std_text

    assert mean_std_text(values, digits) == text
