"""Weighted k-nearest-neighbour classification of frozen features, as in InstDisc [0] and CMC [1].

Features are l2-normalised; the ``k`` training samples most cosine-similar to a query vote for their class
with weight ``exp(similarity / T)``. ``k`` and ``T`` are chosen on a stratified holdout of the training split;
the test split is then classified against the whole training split. Similarities are computed on the
features' device in chunks of queries, so memory stays at ``chunk_size x N_train`` floats; the holdout's
top-k neighbours are found once, for the largest candidate ``k``, and every (k, T) candidate is scored from
them.

- [0] InstDisc, Wu et al., 2018, https://arxiv.org/abs/1805.01978
- [1] CMC, Tian et al., 2019, https://arxiv.org/abs/1906.05849
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.eval.probe import ProbeResult, as_features, encode_labels, holdout_split

DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200)
DEFAULT_TEMPERATURES = (0.05, 0.07, 0.1, 0.5)


def nearest_neighbours(train_x: np.ndarray | torch.Tensor, query_x: np.ndarray | torch.Tensor, k: int,
                       chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (Q, k) and indices (Q, k) of each query's ``k`` most similar training samples, on
    ``train_x``'s device."""
    train = F.normalize(as_features(train_x), dim=1)
    query = F.normalize(as_features(query_x, train.device), dim=1)
    k = min(k, len(train))
    sims, indices = [], []
    for start in range(0, len(query), chunk_size):
        top = (query[start:start + chunk_size] @ train.T).topk(k, dim=1)
        sims.append(top.values)
        indices.append(top.indices)
    if not sims:
        return torch.zeros(0, k, device=train.device), torch.zeros(0, k, dtype=torch.long, device=train.device)
    return torch.cat(sims), torch.cat(indices)


def weighted_vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, k: int, temperature: float,
                  num_classes: int) -> torch.Tensor:
    """The class each query's first ``k`` neighbours vote for, each with weight ``exp(sim / temperature)``.

    Examples:
        >>> sims = torch.tensor([[0.9, 0.5, 0.4]]); labels = torch.tensor([[0, 1, 1]])
        >>> weighted_vote(sims, labels, 3, 0.1, 2), weighted_vote(sims, labels, 3, 1.0, 2)
        (tensor([0]), tensor([1]))
    """
    sims, neighbour_labels = sims[:, :k], neighbour_labels[:, :k]
    # exp((s - max) / T): the argmax is unchanged and small temperatures do not overflow
    weights = torch.exp((sims - sims[:, :1]) / temperature)
    votes = torch.zeros(len(sims), num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, neighbour_labels, weights)
    return votes.argmax(1)


def knn_predict(train_x: np.ndarray | torch.Tensor, train_y: np.ndarray, query_x: np.ndarray | torch.Tensor,
                k: int, temperature: float, num_classes: int, chunk_size: int = 1024) -> np.ndarray:
    """The weighted-kNN class of every query against the training set (labels 0 .. num_classes - 1).

    Examples:
        >>> knn_predict(np.eye(2), np.array([0, 1]), np.array([[1.0, 0.1]]), k=1, temperature=0.1, num_classes=2)
        array([0])
    """
    sims, indices = nearest_neighbours(train_x, query_x, k, chunk_size)
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long, device=indices.device)[indices]
    return weighted_vote(sims, labels, k, temperature, num_classes).cpu().numpy()


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
              holdout_fraction: float = 0.2, seed: int = 0, ks: Sequence[int] = DEFAULT_KS,
              temperatures: Sequence[float] = DEFAULT_TEMPERATURES, chunk_size: int = 1024) -> ProbeResult:
    """Top-1 of weighted kNN on the test split, ``k`` and ``T`` chosen on a stratified train holdout.

    ``k`` values above the number of fitted holdout-training samples are dropped (the smallest is kept).

    Examples:
        >>> result = knn_probe(train_x, train_y, test_x, test_y, seed=0)
        >>> result.chosen
        {'k': 20, 'temperature': 0.07}
    """
    start = time.perf_counter()
    train_y, test_y, num_classes = encode_labels(train_y, test_y)
    if num_classes < 2:
        raise ConfigError(f"kNN needs at least 2 classes in the training split, got {num_classes}")
    train_x = as_features(train_x)
    fit, held = holdout_split(train_y, holdout_fraction, seed)
    usable = sorted(k for k in ks if k <= len(fit)) or [min(ks)]
    rows = {name: torch.as_tensor(index, device=train_x.device) for name, index in (("fit", fit), ("held", held))}
    sims, indices = nearest_neighbours(train_x[rows["fit"]], train_x[rows["held"]], max(usable), chunk_size)
    neighbour_labels = torch.as_tensor(train_y[fit], device=indices.device)[indices]
    held_y = torch.as_tensor(train_y[held], device=indices.device)
    candidates = [{"k": int(k), "temperature": float(t)} for k in usable for t in temperatures]
    scores = [float((weighted_vote(sims, neighbour_labels, c["k"], c["temperature"], num_classes) == held_y)
                    .double().mean()) if len(held) else 0.0 for c in candidates]
    best = int(np.argmax(scores))
    chosen = candidates[best]
    predicted = knn_predict(train_x, train_y, test_x, chosen["k"], chosen["temperature"], num_classes, chunk_size)
    top1 = float((predicted == test_y).mean()) if len(test_y) else 0.0
    return ProbeResult(top1, chosen, scores[best], seconds=time.perf_counter() - start)
