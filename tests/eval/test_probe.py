"""Linear probes: separable features reach ~100%, random ones chance, and the test split chooses nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossmodal.errors import ConfigError
from crossmodal.eval.probe import (COARSE_EXPONENTS, REFINE_STEPS, encode_labels, holdout_split, linear_probe,
                                   search_c)


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
    result = linear_probe(train_x, train_y, test_x, test_y, solver=solver, seed=0)
    assert result.top1 >= 0.98 and result.holdout_top1 >= 0.95
    assert result.solver == solver and set(result.chosen) == {"C"}
    record = result.as_dict()
    assert record["converged"] is True and record["iterations"] > 0 and record["seconds"] > 0
    assert record["candidates"] == (18 if solver == "torch" else 6) and record["not_converged"] == []


def test_the_solvers_agree_at_one_c():
    """At a forced C both solvers fit the same objective: the same test predictions, up to a rare tie."""
    train_x, train_y, test_x, test_y = separable(200, 300, dim=30, classes=4, seed=5, spread=6.0)
    for c in (1e-3, 0.1, 10.0):
        ours = linear_probe(train_x, train_y, test_x, test_y, c=c)
        reference = linear_probe(train_x, train_y, test_x, test_y, c=c, solver="sklearn")
        assert ours.holdout_top1 is None and ours.chosen == {"C": c}
        assert abs(ours.top1 - reference.top1) <= 1 / 300


def test_search_sweeps_then_bisects_and_breaks_ties_to_strong_regularisation():
    """A fake path whose holdout accuracy falls by 16 points a decade away from C = 10^0.375: the coarse sweep
    finds 10^0, the bisection (1/2, 1/4, 1/8 decade) 10^0.375, through a tie at 1/4 decade resolved to the
    smaller C; a flat accuracy resolves to the smallest C swept."""
    import math

    def path_of(accuracy):
        class Fit:
            def __init__(self, c):
                correct = max(0, round(100 * accuracy(c)))
                self.predicted = torch.tensor([1] * correct + [0] * (100 - correct))

            def predict(self, x):
                return self.predicted

        class Path:
            def __init__(self):
                self.fits = {}

            def fit_all(self, cs):
                for c in cs:
                    self.fits.setdefault(c, Fit(c))

            def fit(self, c):
                self.fit_all([c])
                return self.fits[c]
        return Path()

    labels = torch.ones(100, dtype=torch.long)
    path = path_of(lambda c: 1 - 0.16 * abs(math.log10(c) - 0.375))
    c, accuracy = search_c(path, torch.zeros(100, 1), labels)
    assert c == pytest.approx(10 ** 0.375) and accuracy == 1.0
    assert len(path.fits) == len(COARSE_EXPONENTS) + 2 * len(REFINE_STEPS)
    flat = path_of(lambda c: 0.5)
    assert search_c(flat, torch.zeros(100, 1), labels) == (pytest.approx(10.0 ** COARSE_EXPONENTS[0]), 0.5)
    assert min(flat.fits) == pytest.approx(10.0 ** COARSE_EXPONENTS[0])  # never beyond the swept range


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
    """Wide features (N < D) are fitted in their row space: the same predictions as scikit-learn on all D."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(40, 300)).astype(np.float32), rng.normal(size=(50, 300)).astype(np.float32)
    train_y, test_y = rng.integers(0, 3, 40), rng.integers(0, 3, 50)
    ours = linear_probe(train_x, train_y, test_x, test_y, c=0.1)
    mean, std = train_x.mean(0), train_x.std(0)
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit((train_x - mean) / std, train_y)
    assert ours.top1 == pytest.approx(float(np.mean(full.predict((test_x - mean) / std) == test_y)))


def test_bad_options():
    with pytest.raises(ConfigError, match="--solver"):
        linear_probe(np.zeros((4, 2), np.float32), np.arange(4) % 2, np.zeros((2, 2), np.float32), np.zeros(2),
                     solver="adam")
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
    result = linear_probe(train_x, train_y, test_x, test_y, seed=0, c_grid=(100.0,), solver="sklearn")
    assert result.holdout_top1 == 0.0 and result.top1 == 1.0
    result = linear_probe(train_x, train_y, test_x, test_y, seed=0)  # torch: every C of its search fails too
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
    with torch.no_grad():  # the eval-mode encoder on each batch's labelled samples: the same bits
        outputs = [encoder(batch["depth"][batch["label"] >= 0]) for batch in batches]
    assert [stage.name for stage in features.stages] == [str(stages[0]), str(stages[1]), "embedding"]
    for stage in features.stages[:2]:
        stage_map = outputs[0].features[int(stage.name)]
        assert stage.pooled_size == default_pooled_size(*stage_map.shape[1:])
        expected = torch.cat([torch.nn.functional.adaptive_avg_pool2d(output.features[int(stage.name)],
                                                                      stage.pooled_size).flatten(1)
                              for output in outputs])
        assert torch.equal(stage.values, expected)
    assert torch.equal(features.stages[-1].values, torch.cat([output.embedding.flatten(1) for output in outputs]))


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


def test_a_stage_equal_to_the_embedding_is_probed_once():
    from crossmodal.eval.features import ExtractedFeatures, StageFeatures, merge_equal_stages

    def split(seed):
        generator = torch.Generator().manual_seed(seed)
        values = [torch.randn(6, 4, generator=generator) for _ in range(3)]
        stages = [StageFeatures("3", 2, values[0]), StageFeatures("4", 1, values[1]),
                  StageFeatures("embedding", None, values[1] + 1e-8)]
        return ExtractedFeatures(stages, np.arange(6))

    train, test = split(0), split(1)
    merge_equal_stages(train, test)
    for extracted in (train, test):
        assert [(stage.name, stage.same_as) for stage in extracted.stages] == [("3", []), ("embedding", ["4"])]
    # equal on the train split only: both kept
    train, test = split(0), split(1)
    test.stages[2].values = test.stages[2].values + 1.0
    merge_equal_stages(train, test)
    assert [stage.name for stage in train.stages] == ["3", "4", "embedding"]


def test_the_embedding_row_of_a_small_input_names_the_stage_it_equals(tmp_path):
    """test_resnet at 8 x 8: the last stage is 1 x 1, so its pooled features are the embedding's."""
    from crossmodal.eval.features import extract_features, merge_equal_stages
    from crossmodal.models import Encoder

    torch.manual_seed(0)
    encoder = Encoder("test_resnet", in_chans=1)
    last = len(encoder.spec.channels) - 1
    batches = [{"depth": torch.randn(6, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1, 0, 1])}]
    train = extract_features(encoder, batches, "depth", "label", [0, last])
    test = extract_features(encoder, batches, "depth", "label", [0, last])
    assert train.stages[1].pooled_size == 1
    merge_equal_stages(train, test)
    assert [(stage.name, stage.same_as) for stage in train.stages] == [("0", []), ("embedding", [str(last)])]
