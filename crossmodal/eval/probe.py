"""Linear probes on frozen features, every choice made on a holdout of the training split.

The regularisation ``C`` is chosen by accuracy on a stratified holdout of the *training* split; the probe is
then refit on the whole training split and evaluated once on the test split, which never influences a choice.
Features are standardised with the statistics of the training split and rotated to coordinates in which its
rows are uncorrelated (their row space when there are fewer rows than dimensions), once: an orthonormal
change of basis that changes neither the optimum nor the predictions
(:func:`~crossmodal.eval.decorrelate.decorrelate`). The search fits the holdout's complement in those
coordinates (the span of all training rows contains that of any subset, so its optimum is exact there too).

Two solvers minimise the same objective (scikit-learn's L2 multinomial logistic regression):

- ``torch`` (the default): full-batch L-BFGS in torch, on the features' device (:mod:`crossmodal.eval.logreg`).
  The ``C`` search follows CLIP's protocol [0]: a coarse sweep of one value per decade over ``1e-6 .. 1e5``
  (the 12 fits as one batched problem: one pass over the features serves all of them), then a bisection
  around the best (steps of 1/2, 1/4, 1/8 decade; each pair warm-started from the nearest fit): 18 fits
  resolve ``C`` to 1/8 decade.
- ``sklearn``: scikit-learn's L-BFGS on the previous release's grid ``1e-3 .. 1e2`` (6 values), 5,000 iterations a fit: the
  reference of the tests and of ``experiments/bench_probe.py``.

- [0] CLIP, Radford et al., 2021, appendix A.3, https://arxiv.org/abs/2103.00020
- [1] DINOv2, Oquab et al., 2023, ``dinov2/eval/log_regression.py``, https://arxiv.org/abs/2304.07193
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from crossmodal.errors import ConfigError
from crossmodal.eval.decorrelate import decorrelate
from crossmodal.eval.logreg import DEFAULT_MAX_ITER, DEFAULT_TOL, LogRegFit, fit_logreg, fit_logreg_batch

SOLVERS = ("torch", "sklearn")
COARSE_EXPONENTS = tuple(range(-6, 6))  # C = 1e-6 .. 1e5, one per decade
REFINE_STEPS = (0.5, 0.25, 0.125)  # bisection around the best, in decades
SKLEARN_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))  # 1e-3 .. 1e2: the grid of the first probes
SKLEARN_MAX_ITER = 5000
SEARCH_TOL = 1e-3  # the search's fits only rank C on the holdout; the final refit stops at DEFAULT_TOL


@dataclass
class ProbeResult:
    """One classifier's outcome on one feature set.

    Attributes:
        top1: accuracy on the test split, in [0, 1].
        chosen: the hyper-parameters chosen on the train holdout (or forced).
        holdout_top1: the accuracy on the train holdout of the chosen hyper-parameters (None when forced).
        solver: which solver fitted it (``torch`` / ``sklearn``), or None for kNN.
        fit: how the final fit went: ``iterations``, ``converged``; for a search also ``candidates`` (fits
            tried) and ``not_converged`` (the C values whose fit stopped at the iteration cap).
        seconds: wall time of the whole probe (search, refit, test).
    """

    top1: float
    chosen: dict[str, Any]
    holdout_top1: Optional[float]
    solver: Optional[str] = None
    fit: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def converged(self) -> bool:
        return bool(self.fit.get("converged", True))

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"top1": self.top1}
        if self.solver is not None:
            record["solver"] = self.solver
        record.update(chosen=self.chosen, holdout_top1=self.holdout_top1, **self.fit,
                      seconds=round(self.seconds, 3))
        return record


def holdout_split(labels: np.ndarray, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the training samples into (fit, holdout) index arrays.

    Each class gives ``round(fraction * n)`` of its ``n`` samples to the holdout, at least one when it has two
    or more and never all of them, so every class seen in training is fitted.

    Examples:
        >>> fit, holdout = holdout_split(np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]), 0.2, seed=0)
        >>> len(fit), len(holdout), sorted(np.array([0] * 5 + [1] * 5)[holdout])
        (8, 2, [0, 1])
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    holdout = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        holdout.append(members[:count])
    held = np.sort(np.concatenate(holdout)) if holdout else np.zeros(0, dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), held)
    return fit, held


def encode_labels(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels as 0 .. K-1 over the training classes; a test class never seen in training becomes -1."""
    train_labels, test_labels = _numpy(train_labels), _numpy(test_labels)
    classes = np.unique(train_labels)
    train = np.searchsorted(classes, train_labels)
    position = np.clip(np.searchsorted(classes, test_labels), 0, max(0, len(classes) - 1))
    test = np.where(classes[position] == test_labels, position, -1) if len(classes) else -np.ones_like(test_labels)
    return train.astype(np.int64), test.astype(np.int64), len(classes)


def _numpy(values: Any) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def as_features(values: Any, device: Optional[str | torch.device] = None) -> torch.Tensor:
    """``values`` as a float32 (N, D) tensor on ``device`` (default: where it is, the CPU for numpy)."""
    tensor = torch.as_tensor(values)
    return tensor.to(device or tensor.device, torch.float32)


def statistics(fit_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std (float32) that :func:`standardize` scales by (constant features keep std 1)."""
    mean = fit_x.mean(0, dtype=torch.float64).float()
    std = (fit_x - mean).pow(2).mean(0, dtype=torch.float64).sqrt()
    std[std < 1e-12] = 1.0
    return mean, std.float()


def standardize(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Scale every tensor by the mean and std of ``fit_x`` alone (constant features keep std 1)."""
    mean, std = statistics(fit_x)
    return [(fit_x - mean) / std, *((x - mean) / std for x in others)]


def prepare(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise by ``fit_x``, then rotate every tensor to coordinates in which ``fit_x``'s columns are
    uncorrelated (its row space when N < D; see :func:`~crossmodal.eval.decorrelate.decorrelate`)."""
    return decorrelate(*standardize(fit_x, *others))


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).double().mean()) if len(labels) else 0.0


class _TorchPath:
    """Fits of one (x, y) problem for several C: those asked for together are fitted as one batch
    (:func:`~crossmodal.eval.logreg.fit_logreg_batch`), each warm-started from the fit of the nearest C done."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, max_iter: int, tol: float) -> None:
        self.x, self.y, self.num_classes, self.max_iter, self.tol = x, y, num_classes, max_iter, tol
        self.fits: dict[float, LogRegFit] = {}

    def fit_all(self, cs: Sequence[float]) -> None:
        todo = [c for c in dict.fromkeys(cs) if c not in self.fits]
        if not todo:
            return
        inits = []
        for c in todo:
            nearest = min(self.fits, key=lambda done: abs(math.log10(done) - math.log10(c)), default=None)
            inits.append(None if nearest is None else (self.fits[nearest].weight, self.fits[nearest].bias))
        fits = fit_logreg_batch(self.x, self.y, self.num_classes, todo, inits=inits, max_iter=self.max_iter,
                                tol=self.tol)
        self.fits.update(zip(todo, fits))

    def fit(self, c: float) -> LogRegFit:
        self.fit_all([c])
        return self.fits[c]


def search_c(path: _TorchPath, held_x: torch.Tensor, held_y: torch.Tensor,
             measure: Optional[Callable[[LogRegFit], float]] = None) -> tuple[float, float]:
    """The C with the best holdout accuracy (ties to the stronger regularisation) and that accuracy: a coarse
    sweep over :data:`COARSE_EXPONENTS` (one batch), then a bisection by :data:`REFINE_STEPS` within the swept
    range (a batch of two per step). ``measure`` replaces the accuracy by another score of a fit on the
    holdout (higher is better)."""
    if measure is None:
        def measure(fit: LogRegFit) -> float:
            return _accuracy(fit.predict(held_x), held_y)
    scores: dict[float, float] = {}

    def c_of(exponent: float) -> float:
        return float(10.0 ** exponent)

    def score(exponent: float) -> float:
        c = c_of(exponent)
        if c not in scores:
            scores[c] = measure(path.fit(c))
        return scores[c]

    def better(exponent: float, than: float) -> bool:
        return score(exponent) > score(than) or (score(exponent) == score(than) and exponent < than)

    path.fit_all([c_of(exponent) for exponent in COARSE_EXPONENTS])
    best = float(COARSE_EXPONENTS[0])
    for exponent in COARSE_EXPONENTS:
        if better(exponent, best):
            best = float(exponent)
    low, high = COARSE_EXPONENTS[0], COARSE_EXPONENTS[-1]
    for step in REFINE_STEPS:
        centre = best
        neighbours = [exponent for exponent in (centre - step, centre + step) if low <= exponent <= high]
        path.fit_all([c_of(exponent) for exponent in neighbours])
        for exponent in neighbours:
            if better(exponent, best):
                best = exponent
    return c_of(best), score(best)


@dataclass
class FittedClassifier:
    """The linear probe's classifier itself, on the raw features: ``logits = x @ weight.T + bias``.

    Attributes:
        weight: (K, D) float32; bias: (K,) float32, on the features' device.
        c: the regularisation chosen on the holdout; holdout_top1: its accuracy there.
        converged: whether the final fit reached its gradient tolerance.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    holdout_top1: float
    converged: bool

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.weight.dtype) @ self.weight.T + self.bias).argmax(1)


def fit_classifier(train_x: Any, train_y: Any, num_classes: int, *, holdout_fraction: float = 0.2, seed: int = 0,
                   by: str = "accuracy", max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
                   search_tol: float = SEARCH_TOL) -> FittedClassifier:
    """The classifier :func:`linear_probe` (torch solver) fits, returned as weights on the raw features.

    The same choices as the probe: ``C`` searched on the same stratified holdout, the refit on every training row,
    in standardised and decorrelated coordinates; the coordinate changes are linear, so the classifier folds back
    into one affine map of the raw features (computed in float64): with ``z = ((x - mean) / std) M``,
    ``logits = z W^T + b = x (W M^T / std)^T + (b - (W M^T / std) mean)``.

    Args:
        train_x, train_y: (N, D) features and their class ids in ``0 .. num_classes - 1``.
        num_classes: K, the classifier's outputs (a class without training rows still gets its row of weights).
        by: what chooses ``C`` on the holdout: ``accuracy`` (the probe's choice, ties to the stronger
            regularisation, which may leave logits of tiny scale) or ``log_likelihood`` (calibrated probabilities:
            what a teacher's head needs, whose softened outputs are distilled).
    """
    x = as_features(train_x)
    y = torch.as_tensor(_numpy(train_y), device=x.device).long()
    mean, std = statistics(x)
    standardised, rotation = decorrelate((x - mean) / std, torch.eye(x.shape[1], device=x.device))
    fit, held = (torch.as_tensor(rows, device=x.device) for rows in holdout_split(y.cpu().numpy(), holdout_fraction,
                                                                                  seed))
    path = _TorchPath(standardised[fit], y[fit], num_classes, max_iter, max(tol, search_tol))
    held_x, held_y = standardised[held], y[held]
    if by == "log_likelihood":
        def measure(candidate: LogRegFit) -> float:
            return -float(torch.nn.functional.cross_entropy(candidate.logits(held_x).double(), held_y))
    elif by == "accuracy":
        measure = None
    else:
        raise ConfigError(f"fit_classifier: 'by' must be 'accuracy' or 'log_likelihood', got {by!r}")
    c, _ = search_c(path, held_x, held_y, measure)
    holdout_top1 = _accuracy(path.fits[c].predict(held_x), held_y)
    final = fit_logreg(standardised, y, num_classes, c, init=(path.fits[c].weight, path.fits[c].bias),
                       max_iter=max_iter, tol=tol)
    weight = (final.weight.double() @ rotation.double().T) / std.double()
    bias = final.bias.double() - weight @ mean.double()
    return FittedClassifier(weight.float(), bias.float(), float(c), holdout_top1, final.converged)


def _sklearn_fit_predict(train_x: torch.Tensor, train_y: np.ndarray, query_x: torch.Tensor, c: float,
                         seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """scikit-learn's L-BFGS logistic regression at ``c``: the query's predictions and how the fit went."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, solver="lbfgs", max_iter=SKLEARN_MAX_ITER, tol=DEFAULT_TOL, random_state=seed)
    with warnings.catch_warnings():  # recorded as converged=False instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x.cpu().numpy(), train_y)
    iterations = int(np.max(model.n_iter_))
    return model.predict(query_x.cpu().numpy()), {"iterations": iterations,
                                                  "converged": iterations < SKLEARN_MAX_ITER}


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, holdout_fraction: float = 0.2,
                 seed: int = 0, solver: str = "torch", c: Optional[float] = None,
                 c_grid: Sequence[float] = SKLEARN_C_GRID, device: Optional[str | torch.device] = None,
                 max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
                 search_tol: float = SEARCH_TOL) -> ProbeResult:
    """Top-1 of a linear classifier on standardised features, its C chosen on a train holdout.

    Args:
        train_x, train_y: the training split (N, D) and its integer labels (numpy arrays or tensors).
        test_x, test_y: the test split; used only for the final score.
        holdout_fraction: the stratified part of the training split that scores the candidates.
        seed: the holdout draw.
        solver: ``torch`` (L-BFGS in torch, the C search of this module's docstring) or ``sklearn``
            (scikit-learn on ``c_grid``).
        c: force this C (no search; ``holdout_top1`` is None): compares the two solvers at one C.
        device: where the torch solver works (default: where ``train_x`` is).
        max_iter, tol: the torch solver's iteration cap per fit and the final fit's gradient tolerance
            (scikit-learn's default, 1e-4).
        search_tol: the gradient tolerance of the search's fits, which only rank the C values on the holdout
            (at 1e-3 they rank them as at 1e-4, in half the time or less).

    Examples:
        >>> result = linear_probe(train_x, train_y, test_x, test_y, seed=0)
        >>> result.solver, result.chosen, result.top1, result.fit["converged"]
        ('torch', {'C': 0.0316}, 0.93, True)
    """
    start = time.perf_counter()
    if solver not in SOLVERS:
        raise ConfigError(f"--solver must be one of {list(SOLVERS)}, got '{solver}'")
    train_y, test_y, num_classes = encode_labels(train_y, test_y)
    if num_classes < 2:
        raise ConfigError(f"a linear probe needs at least 2 classes in the training split, got {num_classes}")
    train_x = as_features(train_x, device if solver == "torch" else "cpu")
    test_x = as_features(test_x, train_x.device)
    on_device = {name: torch.as_tensor(labels, device=train_x.device)
                 for name, labels in (("train", train_y), ("test", test_y))}
    all_x, query_x = prepare(train_x, test_x)  # train statistics only, once for the search and the refit
    holdout_top1: Optional[float] = None
    search: dict[str, Any] = {}
    init = None
    if c is None:
        fit, held = (torch.as_tensor(rows, device=train_x.device) for rows in holdout_split(train_y, holdout_fraction,
                                                                                            seed))
        fit_x, held_x, fit_y, held_y = all_x[fit], all_x[held], on_device["train"][fit], on_device["train"][held]
        if solver == "torch":
            path = _TorchPath(fit_x, fit_y, num_classes, max_iter, max(tol, search_tol))
            c, holdout_top1 = search_c(path, held_x, held_y)
            init = (path.fits[c].weight, path.fits[c].bias)  # the refit starts from the chosen fit
            search = {"candidates": len(path.fits),
                      "not_converged": sorted(value for value, done in path.fits.items() if not done.converged)}
        else:
            outcomes = [_sklearn_fit_predict(fit_x, fit_y.cpu().numpy(), held_x, value, seed) for value in c_grid]
            held_labels = held_y.cpu().numpy()
            scores = [float(np.mean(predicted == held_labels)) if len(held_labels) else 0.0
                      for predicted, _ in outcomes]
            best = int(np.argmax(scores))  # ties go to the first: the strongest regularisation
            c, holdout_top1 = float(c_grid[best]), scores[best]
            search = {"candidates": len(c_grid),
                      "not_converged": [float(value) for value, (_, info) in zip(c_grid, outcomes)
                                        if not info["converged"]]}
    if solver == "torch":
        final = fit_logreg(all_x, on_device["train"], num_classes, c, init=init, max_iter=max_iter, tol=tol)
        top1 = _accuracy(final.predict(query_x), on_device["test"])
        info = {"iterations": final.iterations, "converged": final.converged}
    else:
        predicted, info = _sklearn_fit_predict(all_x, train_y, query_x, c, seed)
        top1 = float(np.mean(predicted == test_y)) if len(test_y) else 0.0
    return ProbeResult(top1, {"C": float(c)}, holdout_top1, solver, {**info, **search},
                       time.perf_counter() - start)
