"""Decorrelated coordinates leave the probe's optimum and predictions as they are."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _logreg_bounds import distance_to_optimum, float32_objective_error, suboptimality
from crossmodal.eval import decorrelate as module
from crossmodal.eval.decorrelate import decorrelate, project_on_row_space, split_top_axes
from crossmodal.eval.logreg import fit_logreg
from tolerance import gamma


def correlated(num: int, dim: int, seed: int = 0):
    """Features with a steep spectrum (a few directions carry most of the variance) and 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (num,), generator=generator)
    mixing = torch.randn(dim, dim, generator=generator) * torch.logspace(0, -2, dim)[None, :]
    x = torch.randn(num, dim, generator=generator) @ mixing.T + 0.5 * torch.nn.functional.one_hot(labels, dim)[:, :dim]
    return (x - x.mean(0)) / x.std(0), labels


def check_same_problem(transform, x, query, labels, c=0.1):
    """The fits in both coordinates reach one optimum: equal objective values and query logits, within each fit's
    distance from the optimum (``_logreg_bounds``: the stopping rule) and float32's rounding of the values."""
    full = fit_logreg(x, labels, 3, c, tol=1e-7, max_iter=5000)
    small_x, small_query = transform(x, query)
    small = fit_logreg(small_x, labels, 3, c, tol=1e-7, max_iter=5000)
    fits = ((full, x, query), (small, small_x, small_query))
    allowed = sum(suboptimality(fit.weight, fit.bias, features, labels, c, 3)
                  + float32_objective_error(fit.weight, fit.bias, features, labels, c, 3) for fit, features, _ in fits)
    assert small.converged and small.objective == pytest.approx(full.objective, rel=0, abs=allowed)
    # A query's logit moves by at most |(q, 1)| times a fit's distance from the optimum (the coordinates are an
    # isometry of the features the optimum depends on, so distances agree), and rounds by gamma(D + 1) of
    # sum |q w| + |b| on each side.
    moved = sum(distance_to_optimum(fit.weight, fit.bias, features, labels, c, 3) for fit, features, _ in fits)
    allowed = moved * (query.double().pow(2).sum(1, keepdim=True) + 1).sqrt() + sum(
        gamma(rows.shape[1] + 1) * (rows.abs() @ fit.weight.abs().T + fit.bias.abs()) for fit, _, rows in fits)
    assert ((small.logits(small_query) - full.logits(query)).abs() <= allowed).all()
    return small_x


def test_row_space_projection_keeps_the_optimum_and_predictions():
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(30, 200)).astype(np.float32))
    query = torch.from_numpy(rng.normal(size=(10, 200)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 30))
    small_train = check_same_problem(project_on_row_space, train, query, labels)
    assert small_train.shape == (30, 30)
    tall = torch.randn(50, 8)
    assert project_on_row_space(tall, query[:, :8])[0] is tall  # more rows than columns: unchanged


def test_principal_axes_keep_the_optimum_and_decorrelate():
    x, labels = correlated(300, 40)
    rotated = check_same_problem(decorrelate, x, correlated(20, 40, seed=1)[0], labels)
    covariance = rotated.T.double() @ rotated.double()
    off_diagonal = covariance - torch.diag(torch.diagonal(covariance))
    # The axes q (float64 eigenvectors, rounded to float32) give rotated columns X q + e with
    # |e| <= gamma(D + 1) |X| |q|, so an off-diagonal entry (X q_i + e_i) . (X q_j + e_j), zero for exact axes, is
    # at most 2 sqrt(lambda_max) gamma(D + 1) sigma_max(|X|) (Cauchy-Schwarz; sigma_max the largest singular value).
    largest = float(covariance.diagonal().max())
    spread = float(torch.linalg.matrix_norm(x.double().abs(), 2))
    assert off_diagonal.abs().max() <= 2 * math.sqrt(largest) * gamma(x.shape[1] + 1) * spread


def test_split_top_axes_keeps_the_optimum_and_is_the_path_above_the_limit(monkeypatch):
    x, labels = correlated(300, 40)
    query = correlated(20, 40, seed=1)[0]
    split = check_same_problem(lambda *xs: split_top_axes(*xs, count=8), x, query, labels)
    assert split.shape == (300, 48)
    monkeypatch.setattr(module, "MAX_ROTATED_DIM", 16)  # both N and D above it: the split, deterministic
    first, second = decorrelate(x, query)[0], decorrelate(x, query)[0]
    assert first.shape == (300, 40 + min(module.TOP_AXES, 40)) and torch.equal(first, second)


def test_decorrelating_cuts_the_iterations():
    x, labels = correlated(400, 60)
    plain = fit_logreg(x, labels, 3, 1.0)
    rotated = fit_logreg(decorrelate(x)[0], labels, 3, 1.0)
    assert rotated.converged and rotated.iterations < plain.iterations / 2
