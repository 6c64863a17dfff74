"""Paired comparisons over seeds, against hand-computed values."""
from __future__ import annotations

import math

import pytest

from crossmodal.eval.paired import compare


def test_a_win_in_every_seed_beyond_the_spread_of_the_differences_is_a_claim():
    a = {0: 0.50, 1: 0.60, 2: 0.55}
    b = {0: 0.49, 1: 0.58, 2: 0.545}
    result = compare(a, b)
    # differences 0.010, 0.020, 0.005: mean 0.011667, sample std sqrt((0.0000028 + 0.0000694 + 0.0000444) / 2)
    assert result.seeds == (0, 1, 2) and (result.wins, result.losses) == (3, 0)
    assert result.mean_difference == pytest.approx(0.035 / 3)
    assert result.std_difference == pytest.approx(math.sqrt(((0.010 - 0.035 / 3) ** 2 + (0.020 - 0.035 / 3) ** 2
                                                             + (0.005 - 0.035 / 3) ** 2) / 2))
    # A's own seed-to-seed spread (5 points) is far larger: what the pair shares cancels in the difference
    assert result.verdict == "A"
    assert compare(b, a).verdict == "B"


def test_a_loss_in_one_seed_or_a_mean_within_the_spread_is_a_tie():
    assert compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.49, 1: 0.53, 2: 0.50}).verdict == "tie"
    # ahead in every seed, but differences 0.001, 0.001, 0.1: mean 0.034 < std 0.057
    skewed = compare({0: 0.501, 1: 0.601, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.6})
    assert skewed.wins == 3 and skewed.mean_difference < skewed.std_difference and skewed.verdict == "tie"


def test_only_finite_paired_seeds_count_and_fewer_than_three_decide_nothing():
    result = compare({0: 0.9, 1: 0.8, 7: 0.1, 8: float("nan")}, {1: 0.5, 7: 0.0, 8: 0.2, 9: 0.3})
    assert result.seeds == (1, 7) and result.mean_difference == pytest.approx(0.2) and result.verdict == "tie"
    single = compare({3: 0.9}, {3: 0.1})
    assert single.std_difference is None and single.verdict == "tie"
    with pytest.raises(ValueError, match="no seed in common"):
        compare({0: 1.0}, {1: 1.0})
