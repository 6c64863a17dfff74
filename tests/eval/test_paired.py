"""Paired comparisons over seeds, against hand-computed values."""
from __future__ import annotations

import math

import pytest

from crossmodal.eval.paired import compare


def test_a_win_in_every_seed_beyond_the_spread_is_a_claim():
    a = {0: 0.50, 1: 0.52, 2: 0.55}
    b = {0: 0.40, 1: 0.41, 2: 0.43}
    result = compare(a, b)
    # differences 0.10, 0.11, 0.12: mean 0.11, sample std 0.01
    assert result.seeds == (0, 1, 2) and (result.wins, result.losses) == (3, 0)
    assert result.mean_difference == pytest.approx(0.11) and result.std_difference == pytest.approx(0.01)
    # std of a: values 0.50, 0.52, 0.55 around 0.52333: sqrt((0.000544 + 0.0000011 + 0.000711) / 2)
    assert result.spread == pytest.approx(math.sqrt(((0.5 - 0.52333333) ** 2 + (0.52 - 0.52333333) ** 2
                                                     + (0.55 - 0.52333333) ** 2) / 2))
    assert result.verdict == "A"
    assert compare(b, a).verdict == "B"
    assert result.describe("crd", "scratch") == "crd ahead of scratch: crd - scratch = +11.0 ± 1.0 pt, crd ahead in 3/3 seeds"


def test_a_loss_in_one_seed_or_a_gap_within_the_spread_is_a_tie():
    assert compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.49, 1: 0.53, 2: 0.50}).verdict == "tie"
    within = compare({0: 0.50, 1: 0.60, 2: 0.55}, {0: 0.49, 1: 0.59, 2: 0.54})  # +1 point each, spread 5
    assert within.wins == 3 and within.verdict == "tie"
    assert within.describe("a", "b").startswith("a and b tie: a - b = +1.0 ± 0.0 pt")


def test_only_the_paired_seeds_count_and_one_seed_decides_nothing():
    result = compare({0: 0.9, 1: 0.8, 7: 0.1}, {1: 0.5, 7: 0.0, 9: 0.3})
    assert result.seeds == (1, 7) and result.mean_difference == pytest.approx(0.2)
    single = compare({3: 0.9}, {3: 0.1})
    assert single.std_difference is None and single.spread is None and single.verdict == "tie"
    with pytest.raises(ValueError, match="no seed in common"):
        compare({0: 1.0}, {1: 1.0})
