"""Coordinates in which training features are uncorrelated: an orthonormal change of basis for linear probes.

An L2-penalised linear model is unchanged by an orthonormal change of basis of its features (the penalty is
rotation-invariant), and by a projection on the training rows' span (its optimal weights lie there: the
representer theorem). In coordinates where the training features are uncorrelated, the per-feature
preconditioner of :func:`~crossmodal.eval.logreg.fit_logreg_batch` sees the real curvature, and L-BFGS needs
a fraction of the steps it takes on correlated features.
"""
from __future__ import annotations

import torch

MAX_ROTATED_DIM = 2048  # above it (in N and D), an eigendecomposition costs more than it saves
TOP_AXES = 256  # leading principal axes split off above MAX_ROTATED_DIM


def decorrelate(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train_x`` and ``others`` in coordinates along which the training features are uncorrelated: the row
    space when N < D (:func:`project_on_row_space`), else the principal axes. When both N and D exceed
    :data:`MAX_ROTATED_DIM`, where an eigendecomposition would cost more than it saves, the leading principal
    axes are split off instead (:func:`split_top_axes`). None of them changes the optimum's value or its
    predictions.

    Examples:
        >>> train, test = decorrelate(torch.randn(1000, 64), torch.randn(10, 64))  # principal axes
        >>> torch.allclose(train.T @ train, torch.diag(torch.diagonal(train.T @ train)), atol=1e-2)
        True
    """
    num, dim = train_x.shape
    if min(num, dim) > MAX_ROTATED_DIM:
        return split_top_axes(train_x, *others)
    if num < dim:
        return project_on_row_space(train_x, *others)
    x64 = train_x.double()
    _, axes = torch.linalg.eigh(x64.T @ x64)
    axes = axes.float()
    return [x @ axes for x in (train_x, *others)]


def split_top_axes(train_x: torch.Tensor, *others: torch.Tensor, count: int = TOP_AXES) -> list[torch.Tensor]:
    """Every tensor as ``[x A, x (I - A A^T)]`` (N, count + D), with ``A`` (D, count) orthonormal axes close to
    the leading principal axes of ``train_x`` (a randomised SVD [0]).

    With weights ``[a; b]`` the logits are ``x W`` for ``W = A a + (I - A A^T) b``, and the penalty
    ``|a|^2 + |b|^2`` is ``|W|^2`` at the optimum (where ``A^T b = 0``: that part of ``b`` changes no logit), so
    the optimum's value and its predictions are those of the original problem, for any orthonormal ``A``.
    What changes is the conditioning: the few directions of largest variance, which make large feature sets
    ill-conditioned, become columns of their own that the per-feature preconditioner of
    :func:`~crossmodal.eval.logreg.fit_logreg_batch` scales.

    - [0] Halko, Martinsson, Tropp, 2011, https://arxiv.org/abs/0909.4061 (``torch.svd_lowrank``)
    """
    count = min(count, *train_x.shape)
    with torch.random.fork_rng(devices=[train_x.device] if train_x.is_cuda else []):
        torch.manual_seed(0)  # the same axes on every run, and the caller's random streams untouched
        _, _, axes = torch.svd_lowrank(train_x, q=count, niter=2)
    axes = torch.linalg.qr(axes)[0]
    split = []
    for x in (train_x, *others):
        top = x @ axes
        split.append(torch.cat([top, torch.addmm(x, top, axes.T, alpha=-1.0)], 1))
    return split


def project_on_row_space(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train_x`` and ``others`` in coordinates of an orthonormal basis of the rows of ``train_x``, when it has
    fewer rows than columns; unchanged otherwise.

    An L2-penalised linear model's optimal weights lie in this span (the representer theorem), so fitting on
    the projected training rows and predicting projected queries gives the same minimum and the same
    predictions as the full problem, at a cost in ``r <= N`` instead of ``D`` dimensions.

    With ``train_x = U S V^T`` the basis is ``V = train_x^T U S^-1``: the training rows become ``U S`` and a
    query ``q`` becomes ``(q train_x^T) U S^-1``, all from the (N, N) Gram matrix, in float64. Directions whose
    singular value is below ``s_max * max(N, D) * eps(float32)`` are dropped.

    Examples:
        >>> train, query = project_on_row_space(torch.randn(30, 200), torch.randn(5, 200))
        >>> train.shape, query.shape
        (torch.Size([30, 30]), torch.Size([5, 30]))
    """
    num, dim = train_x.shape
    if num >= dim:
        return [train_x, *others]
    x64 = train_x.double()
    eigenvalues, eigenvectors = torch.linalg.eigh(x64 @ x64.T)
    threshold = eigenvalues.max().clamp_min(0) * (max(num, dim) * torch.finfo(torch.float32).eps) ** 2
    keep = eigenvalues > threshold
    if not bool(keep.any()):  # every row zero: one direction, all coordinates zero
        return [torch.zeros(len(x), 1, dtype=torch.float32, device=x.device) for x in (train_x, *others)]
    singular = eigenvalues[keep].sqrt()
    vectors = eigenvectors[:, keep]
    projected = [(vectors * singular).float()]
    projected += [((x.double() @ x64.T) @ (vectors / singular)).float() for x in others]
    return projected
