"""Weighted kNN: a hand-computed example, chunking, separable vs random features, holdout-only choices."""
from __future__ import annotations

import math

import numpy as np
import torch

from crossmodal.eval.knn import knn_predict, knn_probe, nearest_neighbours, weighted_vote
from tolerance import gamma


def test_hand_computed_vote():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 1.0]])
    labels = np.array([0, 1, 1, 0])
    query = np.array([[2.0, 0.2]])  # cosines: 0.995, 0.0995, 0.677, 0.774
    sims, indices = nearest_neighbours(train, query, k=3)
    assert indices.tolist() == [[0, 3, 2]]
    cosines = [float(train[i] @ query[0] / np.linalg.norm(train[i]) / np.linalg.norm(query[0])) for i in (0, 3, 2)]
    # float32 (tests/tolerance.py): the inputs' rounding to float32, two normalisations of d = 2 values (d + 3
    # roundings each) and their dot product (d more), of unit vectors
    np.testing.assert_allclose(sims[0].numpy(), cosines, rtol=0, atol=gamma(2 + 3 * 2 + 6))
    # k=3, T=1: class 0 gets e^.995 + e^.774 = 4.873, class 1 e^.677 = 1.967 -> 0
    assert knn_predict(train, labels, query, 3, 1.0, 2).tolist() == [0]
    # two weaker neighbours outvote a closer one at T=1, not at T=0.01
    votes = weighted_vote(torch.tensor([[0.2, 0.1, 0.1]]), torch.tensor([[0, 1, 1]]), 3, 1.0, 2)
    assert votes.tolist() == [1] and math.exp(0.2) < 2 * math.exp(0.1)
    assert weighted_vote(torch.tensor([[0.2, 0.1, 0.1]]), torch.tensor([[0, 1, 1]]), 3, 0.01, 2).tolist() == [0]


def test_chunks_give_the_same_neighbours():
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(50, 8)), rng.normal(size=(23, 8))
    whole = nearest_neighbours(train, query, 5, chunk_size=1000)
    chunked = nearest_neighbours(train, query, 5, chunk_size=4)
    # the same normalised rows; only the product's blocking differs: two dot products of unit 8-vectors, each
    # within gamma(8) of the exact one
    assert torch.equal(whole[1], chunked[1])
    torch.testing.assert_close(whole[0], chunked[0], rtol=0, atol=2 * gamma(8))


def test_separable_and_random_features():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 5
    train_y, test_y = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    train_x = centres[train_y] + rng.normal(size=(200, 16))
    test_x = centres[test_y] + rng.normal(size=(100, 16))
    result = knn_probe(train_x, train_y, test_x, test_y, seed=0)
    assert result.top1 >= 0.98 and result.chosen["k"] <= 160  # capped by the holdout's training part
    noise = knn_probe(rng.normal(size=(200, 16)), train_y, rng.normal(size=(300, 16)), rng.integers(0, 4, 300))
    assert 0.12 < noise.top1 < 0.4


def test_test_labels_never_reach_the_choice():
    rng = np.random.default_rng(2)
    train_x, train_y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    test_x, test_y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    first = knn_probe(train_x, train_y, test_x, test_y, seed=0, ks=(1, 5, 10, 100))
    second = knn_probe(train_x, train_y, test_x, rng.permutation(test_y), seed=0, ks=(1, 5, 10, 100))
    assert first.chosen == second.chosen and first.holdout_top1 == second.holdout_top1
    assert first.chosen["k"] in (1, 5, 10)  # 100 exceeds the 48 fitted samples


def test_knn_is_refitted_on_the_whole_training_split():
    from test_probe import _adversarial_holdout

    train_x, train_y, test_x, test_y = _adversarial_holdout()
    result = knn_probe(train_x, train_y, test_x, test_y, seed=0)
    assert result.holdout_top1 == 0.0 and result.top1 == 1.0
