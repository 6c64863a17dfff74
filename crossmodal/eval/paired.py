"""Paired comparisons over seeds: does method A beat method B, seed by seed, by more than the spread?

A study trains every method once per seed from the same teacher on the same data, so seed ``s`` of A and seed
``s`` of B form a pair, and what the two share (the teacher, the data order) cancels in their difference. A
claim "A beats B" is written only when there are at least three paired seeds, A is ahead in every one, and the
mean difference exceeds the sample standard deviation of the differences (a paired t statistic above sqrt(n));
anything less is a tie. With three seeds even a clean sweep happens by chance one time in eight when the two
methods are equal, so a claim is a consistent ordering at this scale, not a significance test.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional

MIN_SEEDS = 3


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the seeds both have (finite values only).

    Attributes:
        seeds: the paired seeds, ascending.
        mean_difference: mean of A - B over the paired seeds.
        std_difference: sample standard deviation of A - B (None for one seed).
        wins: seeds where A > B; losses: seeds where A < B.
        verdict: ``"A"`` (A ahead), ``"B"`` (B ahead) or ``"tie"``.
    """

    seeds: tuple[int, ...]
    mean_difference: float
    std_difference: Optional[float]
    wins: int
    losses: int
    verdict: str


def compare(a: Mapping[int, float], b: Mapping[int, float]) -> PairedComparison:
    """Compare per-seed scores ``a`` and ``b`` (seed -> value) on the seeds where both are finite.

    Raises:
        ValueError: no seed in common.

    Examples:
        >>> compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.40, 1: 0.41, 2: 0.43}).verdict
        'A'
        >>> compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.49, 1: 0.53, 2: 0.50}).verdict  # B ahead once
        'tie'
        >>> compare({0: 0.50, 1: 0.52}, {0: 0.40, 1: 0.41}).verdict  # two seeds decide nothing
        'tie'
    """
    seeds = tuple(sorted(seed for seed in set(a) & set(b) if math.isfinite(a[seed]) and math.isfinite(b[seed])))
    if not seeds:
        raise ValueError("no seed in common")
    differences = [a[seed] - b[seed] for seed in seeds]
    wins = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    mean = statistics.fmean(differences)
    spread = statistics.stdev(differences) if len(seeds) > 1 else None
    verdict = "tie"
    if len(seeds) >= MIN_SEEDS and abs(mean) > spread:
        if wins == len(seeds):
            verdict = "A"
        elif losses == len(seeds):
            verdict = "B"
    return PairedComparison(seeds, mean, spread, wins, losses, verdict)
