"""Paired comparisons over seeds: does method A beat method B, seed by seed, by more than the spread?

A study trains every method once per seed from the same teacher on the same data, so seed ``s`` of A and seed
``s`` of B form a pair. A claim "A beats B" is written only when A is ahead in every paired seed and the mean
difference exceeds the larger of the two methods' seed-to-seed standard deviations; anything less is a tie.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the seeds both have.

    Attributes:
        seeds: the paired seeds, ascending.
        mean_difference: mean of A - B over the paired seeds.
        std_difference: sample standard deviation of A - B (None for one seed).
        wins: seeds where A > B; losses: seeds where A < B.
        spread: the larger of A's and B's sample standard deviations over those seeds (None for one seed).
        verdict: ``"A"`` (A ahead), ``"B"`` (B ahead) or ``"tie"``.
    """

    seeds: tuple[int, ...]
    mean_difference: float
    std_difference: Optional[float]
    wins: int
    losses: int
    spread: Optional[float]
    verdict: str

    def describe(self, a: str, b: str, scale: float = 100.0, unit: str = " pt") -> str:
        """``crd ahead of scratch: +8.3 ± 1.2 pt, ahead in 3/3 seeds`` (differences times ``scale``)."""
        n = len(self.seeds)
        spread = f" ± {scale * self.std_difference:.1f}" if self.std_difference is not None else ""
        head = {"A": f"{a} ahead of {b}", "B": f"{b} ahead of {a}", "tie": f"{a} and {b} tie"}[self.verdict]
        return (f"{head}: {a} - {b} = {scale * self.mean_difference:+.1f}{spread}{unit}, {a} ahead in "
                f"{self.wins}/{n} seeds")


def compare(a: Mapping[int, float], b: Mapping[int, float]) -> PairedComparison:
    """Compare per-seed scores ``a`` and ``b`` (seed -> value) on the seeds both have.

    Raises:
        ValueError: no seed in common.

    Examples:
        >>> compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.40, 1: 0.41, 2: 0.43}).verdict
        'A'
        >>> compare({0: 0.50, 1: 0.52, 2: 0.55}, {0: 0.49, 1: 0.53, 2: 0.50}).verdict  # B ahead once
        'tie'
        >>> compare({0: 0.50, 1: 0.60, 2: 0.55}, {0: 0.49, 1: 0.59, 2: 0.54}).verdict  # within the spread
        'tie'
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError("no seed in common")
    differences = [a[seed] - b[seed] for seed in seeds]
    wins = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    mean = statistics.fmean(differences)
    several = len(seeds) > 1
    spread = max(statistics.stdev([a[s] for s in seeds]), statistics.stdev([b[s] for s in seeds])) if several else None
    verdict = "tie"
    if several and abs(mean) > spread:
        if wins == len(seeds):
            verdict = "A"
        elif losses == len(seeds):
            verdict = "B"
    return PairedComparison(seeds, mean, statistics.stdev(differences) if several else None, wins, losses, spread,
                            verdict)
