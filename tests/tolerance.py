"""Tolerances for float32 results, derived from the arithmetic that produced them.

A float32 result is not the same bits on every CPU: PyTorch, MKL and oneDNN pick vector kernels for the CPU they
run on (``tests/kernel_passes.py`` runs the numerical tests under each), and those kernels add in other orders and
evaluate exp and log with other polynomials. What every CPU shares is how large float32's error may be, so a
tolerance here is that bound, written from the computation it checks, never a number that happened to pass:

- every float32 operation rounds with a relative error of at most u = 2**-24 (IEEE 754);
- exp, log, log1p and the like are within 1 ulp (torch's vector kernels use SLEEF's 1.0-ulp functions, the scalar
  ones glibc's): at most 2u, so each counts as two roundings;
- k roundings in a row compound to at most gamma(k) = k u / (1 - k u) (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., Lemma 3.1);
- a float32 sum of n terms, in whatever order a kernel adds them, lies within gamma(n - 1) * sum |t_i| of the exact
  sum, and a dot product of length n within gamma(n) * sum |a_i b_i| (ibid., sections 3.1 and 4.2);
- exp turns an absolute error d in its argument into a relative error of about d: a score divided by a
  temperature T before exp carries its absolute error times 1 / T.

A reference computed in float64 (or with Python floats) from the same float32 inputs is exact at this scale, so
the bound on the float32 side is the tolerance. Where a test checks a formula rather than float32's accuracy (the
classic distillers against hand computations), it runs the formula in float64 and compares at ``FLOAT64``.
Bit-identity claims (resume, DDP against one process, the device loader against the DataLoader) compare one
machine with itself and stay exact.
"""
from __future__ import annotations

U = 2.0 ** -24  # float32's unit roundoff

# The relative tolerance of a formula evaluated in float64 (u = 2**-53) against the same formula in Python floats:
# room for 9,000 roundings' worth of error (their count times the cancellation in the result), more than any
# formula checked this way takes (a few dozen operations on values of order one), and 10**5 times below what a
# float32 evaluation could meet: a difference in the formula itself, however small, shows.
FLOAT64 = 1e-12


def gamma(k: float) -> float:
    """gamma(k) = k u / (1 - k u): the relative error bound of k float32 roundings in a row (k may be fractional
    where a rounding of a larger value is expressed relative to a smaller one)."""
    if not 0 <= k * U < 1:
        raise ValueError(f"gamma({k}) is not defined")
    return k * U / (1 - k * U)


def sum_error(magnitude: float, terms: int, roundings_per_term: float = 0) -> float:
    """The bound on the absolute error of a float32 sum of ``terms`` terms whose magnitudes add to ``magnitude``,
    each term computed from exact inputs with at most ``roundings_per_term`` roundings (a transcendental counts
    as two): gamma(terms - 1 + roundings_per_term) * magnitude."""
    return gamma(max(terms - 1, 0) + roundings_per_term) * magnitude
