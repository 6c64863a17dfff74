"""Linear probes on frozen features, every choice made on a holdout of the training split.

The regularisation (scikit-learn) or the epochs and learning rate (torch, for feature sets too large for
L-BFGS) are chosen by accuracy on a stratified holdout of the *training* split; the probe is then refit on the
whole training split and evaluated once on the test split, which never influences a choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from crossmodal.errors import ConfigError

DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))  # 1e-3 .. 1e2
DEFAULT_TORCH_GRID = {"lr": (0.01, 0.1, 1.0), "epochs": (30, 100)}
# Above this many floats (samples x dim) the torch solver replaces L-BFGS, which gets slow and memory-hungry.
MAX_SKLEARN_FLOATS = 2e7
SOLVERS = ("auto", "sklearn", "torch")


@dataclass
class ProbeResult:
    """One classifier's outcome on one feature set.

    Attributes:
        top1: accuracy on the test split, in [0, 1].
        chosen: the hyper-parameters chosen on the train holdout.
        holdout_top1: the accuracy on the train holdout of the chosen hyper-parameters.
        solver: which solver fitted it (``sklearn`` / ``torch``), or None for kNN.
    """

    top1: float
    chosen: dict[str, Any]
    holdout_top1: float
    solver: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"top1": self.top1}
        if self.solver is not None:
            record["solver"] = self.solver
        record.update(chosen=self.chosen, holdout_top1=self.holdout_top1)
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
    classes = np.unique(train_labels)
    train = np.searchsorted(classes, train_labels)
    position = np.clip(np.searchsorted(classes, test_labels), 0, max(0, len(classes) - 1))
    test = np.where(classes[position] == test_labels, position, -1) if len(classes) else -np.ones_like(test_labels)
    return train.astype(np.int64), test.astype(np.int64), len(classes)


def _standardize(fit_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every array by the mean and std of ``fit_x`` alone (constant features keep std 1)."""
    mean = fit_x.mean(axis=0, dtype=np.float64)
    std = fit_x.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    return [((x - mean) / std).astype(np.float32) for x in (fit_x, *others)]


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else 0.0


def reduce_to_row_space(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every array projected on the row space of ``train_x`` when that is smaller than its dimension."""
    basis = row_space(train_x)
    return [train_x, *others] if basis is None else [x @ basis for x in (train_x, *others)]


def row_space(train_x: np.ndarray) -> Optional[np.ndarray]:
    """An orthonormal basis (D, r) of the rows of ``train_x`` when it has fewer samples than dimensions, else None.

    An L2-penalised linear model's optimal weights lie in this span (the representer theorem), so fitting on
    ``train_x @ basis`` and predicting ``query @ basis`` gives the same minimum and the same predictions as the
    full problem, at a cost in ``r <= N`` instead of ``D`` dimensions.
    """
    if train_x.shape[0] >= train_x.shape[1]:
        return None
    _, singular, right = np.linalg.svd(train_x.astype(np.float64), full_matrices=False)
    keep = singular > singular[:1].max(initial=0.0) * max(train_x.shape) * np.finfo(np.float32).eps
    return right[keep].T.astype(np.float32)


def _sklearn_predict(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, c: float,
                     seed: int) -> np.ndarray:
    """Fit L-BFGS multinomial logistic regression (penalty ``||W||^2 / 2C``) and predict ``query_x``.

    Features are expected in the row space of ``train_x`` already when it has more dimensions than samples
    (:func:`reduce_to_row_space`): the penalty is rotation-invariant, so the fit is the same.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, solver="lbfgs", max_iter=5000, tol=1e-4, random_state=seed)
    with warnings.catch_warnings():  # a weakly regularised fit on separable data need not converge: still valid
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return model.predict(query_x)


def _fit_torch(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, lr: float, epochs: int, seed: int,
               batch_size: int = 256, weight_decay: float = 0.0) -> torch.nn.Linear:
    """A linear layer trained with SGD (momentum 0.9) and a cosine learning-rate schedule, on standardised x."""
    generator = torch.Generator().manual_seed(seed)
    features, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    layer = torch.nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), batch_size):
            batch = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(layer(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return layer


def _predict_torch(layer: torch.nn.Linear, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([layer(torch.from_numpy(x[i:i + chunk])).argmax(1).numpy()
                               for i in range(0, len(x), chunk)]) if len(x) else np.zeros(0, dtype=np.int64)


def choose_solver(num_samples: int, dim: int, solver: str = "auto", max_floats: float = MAX_SKLEARN_FLOATS) -> str:
    """``sklearn`` unless ``solver`` says otherwise or the feature set exceeds ``max_floats`` values."""
    if solver not in SOLVERS:
        raise ConfigError(f"--solver must be one of {list(SOLVERS)}, got '{solver}'")
    if solver != "auto":
        return solver
    return "torch" if num_samples * dim > max_floats else "sklearn"


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 holdout_fraction: float = 0.2, seed: int = 0, solver: str = "auto",
                 c_grid: Sequence[float] = DEFAULT_C_GRID,
                 torch_grid: Optional[dict[str, Sequence[float]]] = None) -> ProbeResult:
    """Top-1 of a linear classifier on standardised features, its hyper-parameters chosen on a train holdout.

    Args:
        train_x, train_y: the training split (N, D) and its integer labels.
        test_x, test_y: the test split; used only for the final score.
        holdout_fraction: the stratified part of the training split that scores the candidates.
        seed: the holdout draw and the torch solver's initial order.
        solver: ``sklearn`` (L-BFGS logistic regression, C chosen from ``c_grid``), ``torch`` (SGD, lr and
            epochs chosen from ``torch_grid``) or ``auto`` (torch above ``MAX_SKLEARN_FLOATS`` values).

    Examples:
        >>> result = linear_probe(train_x, train_y, test_x, test_y, seed=0)
        >>> result.solver, result.chosen, result.top1
        ('sklearn', {'C': 0.1}, 0.93)
    """
    train_y, test_y, num_classes = encode_labels(np.asarray(train_y), np.asarray(test_y))
    if num_classes < 2:
        raise ConfigError(f"a linear probe needs at least 2 classes in the training split, got {num_classes}")
    solver = choose_solver(len(train_x), train_x.shape[1], solver)
    fit, held = holdout_split(train_y, holdout_fraction, seed)
    prepare = (lambda *arrays: reduce_to_row_space(*_standardize(*arrays))) if solver == "sklearn" else _standardize
    fit_x, held_x = prepare(train_x[fit], train_x[held])
    if solver == "sklearn":
        candidates = [{"C": float(c)} for c in c_grid]
    else:
        grid = {**DEFAULT_TORCH_GRID, **(torch_grid or {})}
        candidates = [{"lr": float(lr), "epochs": int(epochs)} for lr in grid["lr"] for epochs in grid["epochs"]]

    def fit_predict(x: np.ndarray, y: np.ndarray, query: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        if solver == "sklearn":
            return _sklearn_predict(x, y, query, params["C"], seed)
        return _predict_torch(_fit_torch(x, y, num_classes, params["lr"], params["epochs"], seed), query)

    scores = [_accuracy(fit_predict(fit_x, train_y[fit], held_x, params), train_y[held]) for params in candidates]
    best = int(np.argmax(scores))  # ties go to the first: the strongest regularisation / smallest lr
    all_x, query_x = prepare(train_x, test_x)
    top1 = _accuracy(fit_predict(all_x, train_y, query_x, candidates[best]), test_y)
    return ProbeResult(top1, candidates[best], scores[best], solver)
