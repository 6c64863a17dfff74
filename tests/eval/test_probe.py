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


def test_scaler_is_fitted_on_the_training_split_only():
    # Class by the sign of feature 0; one far outlier in the test split. Statistics from train + test would
    # shrink the training features' spread along feature 0 ~1e4-fold and the probe would fall to chance.
    rng = np.random.default_rng(0)
    train_y, test_y = np.repeat([0, 1], 50), np.repeat([0, 1], 25)
    train_x = rng.normal(size=(100, 4)).astype(np.float32)
    test_x = rng.normal(size=(50, 4)).astype(np.float32)
    train_x[:, 0] = np.where(train_y == 1, 1.0, -1.0) + 0.1 * rng.normal(size=100)
    test_x[:, 0] = np.where(test_y == 1, 1.0, -1.0) + 0.1 * rng.normal(size=50)
    test_x = np.concatenate([test_x, [[1e6, 0, 0, 0]]]).astype(np.float32)
    test_y = np.append(test_y, 1)
    result = linear_probe(train_x, train_y, test_x, test_y, seed=0)
    assert result.top1 >= 50 / 51


def _adversarial_holdout(seed: int = 0):
    """Training data whose holdout samples are far from their class's fitted ones (their own direction), and a
    test split made of exactly those holdout samples: only a probe refitted on the *whole* training split
    classifies them right; one fitted on the holdout's complement gets all of them wrong."""
    rng = np.random.default_rng(seed)
    train_y = np.repeat([0, 1], 12)
    fit, held = holdout_split(train_y, 0.2, seed)
    train_x = np.zeros((24, 3), dtype=np.float32)
    train_x[:, 0] = np.where(train_y == 1, 1.0, -1.0)
    train_x[held] = np.where(train_y[held, None] == 0, [3.0, 0.0, 5.0], [-3.0, 0.0, -5.0])
    train_x += 0.01 * rng.normal(size=train_x.shape).astype(np.float32)
    return train_x, train_y, train_x[held].copy(), train_y[held].copy()


def test_linear_probe_is_refitted_on_the_whole_training_split():
    train_x, train_y, test_x, test_y = _adversarial_holdout()
    result = linear_probe(train_x, train_y, test_x, test_y, seed=0, c_grid=(100.0,))
    assert result.holdout_top1 == 0.0 and result.top1 == 1.0


def test_features_are_extracted_in_eval_mode_without_unlabelled_samples():
    import torch

    from crossmodal.eval.features import default_pooled_size, extract_features, select_stages
    from crossmodal.models import Encoder

    torch.manual_seed(0)
    encoder = Encoder("test_resnet", in_chans=1, small_input=True)
    with torch.no_grad():  # BatchNorm statistics far from a batch's own, so train-mode features differ
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(0.5)
                module.running_var.fill_(4.0)
    buffers = {key: value.clone() for key, value in encoder.state_dict().items()}
    images = torch.randn(10, 1, 32, 32)
    labels = torch.tensor([0, 1, -1, 2, 1, -1, 0, 2, 1, 0])
    batches = [{"depth": images[i:i + 4], "label": labels[i:i + 4]} for i in range(0, 10, 4)]
    encoder.train()
    stages = select_stages(len(encoder.spec.channels), [0, -1])
    features = extract_features(encoder, batches, "depth", "label", stages)
    assert not encoder.training
    assert all(torch.equal(value, buffers[key]) for key, value in encoder.state_dict().items())
    assert features.labels.tolist() == [0, 1, 2, 1, 0, 2, 1, 0]
    with torch.no_grad():
        reference = encoder(images[labels >= 0])
    assert [stage.name for stage in features.stages] == [str(stages[0]), str(stages[1]), "embedding"]
    for stage in features.stages[:2]:
        stage_map = reference.features[int(stage.name)]
        assert stage.pooled_size == default_pooled_size(*stage_map.shape[1:])
        expected = torch.nn.functional.adaptive_avg_pool2d(stage_map, stage.pooled_size).flatten(1)
        np.testing.assert_allclose(stage.values, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features.stages[-1].values, reference.embedding.flatten(1).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_a_fixed_pooled_size_is_capped_at_each_stage_map():
    import torch

    from crossmodal.eval.features import extract_features
    from crossmodal.models import Encoder

    torch.manual_seed(0)
    encoder = Encoder("test_resnet", in_chans=1, small_input=True)
    batches = [{"depth": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])}]
    last = len(encoder.spec.channels) - 1
    features = extract_features(encoder, batches, "depth", "label", [0, last], pooled_size=8)
    side = {0: 32 // encoder.spec.reductions[0], last: 32 // encoder.spec.reductions[last]}
    assert side[0] >= 8 > side[last]  # the shallow map pools to 8 x 8, the deepest keeps its own size
    assert [stage.pooled_size for stage in features.stages[:2]] == [8, side[last]]
    assert features.stages[1].dim == encoder.spec.channels[last] * side[last] ** 2
