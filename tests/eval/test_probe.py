"""Linear probes: separable features reach ~100%, random ones chance, and the test split chooses nothing."""
from __future__ import annotations

import numpy as np
import pytest

from crossmodal.errors import ConfigError
from crossmodal.eval.probe import (choose_solver, encode_labels, holdout_split, linear_probe, reduce_to_row_space)


def separable(num_train: int, num_test: int, dim: int = 20, classes: int = 3, seed: int = 0, spread: float = 1.0):
    """(train_x, train_y, test_x, test_y): Gaussian clusters around well-separated class centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 6
    labels = rng.integers(0, classes, num_train + num_test)
    features = (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32)
    return features[:num_train], labels[:num_train], features[num_train:], labels[num_train:]


def test_holdout_is_stratified_part_of_train_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    fit, held = holdout_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 4, 0]  # a singleton class stays in fit
    assert np.array_equal(held, holdout_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(held, holdout_split(labels, 0.2, seed=4)[1])
    with pytest.raises(ConfigError):
        holdout_split(labels, 1.0)


def test_encode_labels_marks_unseen_test_classes():
    train, test, count = encode_labels(np.array([3, 7, 7]), np.array([7, 5, 3]))
    assert train.tolist() == [0, 1, 1] and test.tolist() == [1, -1, 0] and count == 2


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_separable_features_reach_full_accuracy(solver):
    train_x, train_y, test_x, test_y = separable(150, 60)
    result = linear_probe(train_x, train_y, test_x, test_y, solver=solver, seed=0,
                          torch_grid={"lr": (0.1,), "epochs": (10, 20)})
    assert result.top1 >= 0.98 and result.holdout_top1 >= 0.95
    assert result.solver == solver
    assert set(result.chosen) == ({"C"} if solver == "sklearn" else {"lr", "epochs"})


def test_random_features_give_chance():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(300, 30)), rng.normal(size=(400, 30))
    train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 400)
    result = linear_probe(train_x.astype(np.float32), train_y, test_x.astype(np.float32), test_y)
    assert 0.15 < result.top1 < 0.37


def test_test_labels_never_reach_the_choice():
    train_x, train_y, test_x, test_y = separable(120, 80, dim=40, classes=4, seed=2, spread=8.0)  # C matters
    shuffled = np.random.default_rng(0).permutation(test_y)
    first = linear_probe(train_x, train_y, test_x, test_y, seed=1)
    second = linear_probe(train_x, train_y, test_x, shuffled, seed=1)
    assert first.chosen == second.chosen and first.holdout_top1 == second.holdout_top1
    assert first.top1 != second.top1


def test_row_space_reduction_keeps_predictions():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train_x, query_x = rng.normal(size=(30, 200)), rng.normal(size=(10, 200))
    train_y = rng.integers(0, 3, 30)
    reduced_train, reduced_query = reduce_to_row_space(train_x, query_x)
    assert reduced_train.shape == (30, 30)
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(train_x, train_y)
    small = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(reduced_train, train_y)
    np.testing.assert_allclose(full.decision_function(query_x), small.decision_function(reduced_query), atol=1e-3)


def test_solver_choice():
    assert choose_solver(100, 100) == "sklearn"
    assert choose_solver(10_000, 4096) == "torch"
    assert choose_solver(10_000, 4096, "sklearn") == "sklearn"
    with pytest.raises(ConfigError):
        choose_solver(1, 1, "adam")
    with pytest.raises(ConfigError, match="2 classes"):
        linear_probe(np.zeros((4, 2), np.float32), np.zeros(4), np.zeros((2, 2), np.float32), np.zeros(2))
