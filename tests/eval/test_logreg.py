"""The torch L-BFGS solver reaches scikit-learn's optimum: objective value and predictions, for several C. Values are
compared within what the stopping rule and float32 allow (``_logreg_bounds``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from _logreg_bounds import float32_objective_error, suboptimality
from crossmodal.eval.logreg import fit_logreg, fit_logreg_batch, objective
from tolerance import FLOAT64


def clusters(num: int, dim: int, classes: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    labels = rng.integers(0, classes, num)
    return (centres[labels] + spread * rng.normal(size=(num, dim))).astype(np.float32), labels


def sklearn_fit(x: np.ndarray, y: np.ndarray, c: float):
    """scikit-learn's optimum to a tight tolerance, as (weight, bias) in the torch solver's K-row form."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=50_000, tol=1e-10).fit(x.astype(np.float64), y)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: one vector w; the softmax optimum is [-w/2, w/2]
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return model, torch.tensor(coef), torch.tensor(intercept)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("c", [1e-3, 0.1, 10.0, 1e3])
@pytest.mark.parametrize("spread", [0.3, 3.0], ids=["separable", "overlapping"])
def test_reaches_the_sklearn_optimum(classes, c, spread):
    x, y = clusters(150, 12, classes, spread, seed=classes)
    if spread < 1:
        from sklearn.svm import LinearSVC

        assert LinearSVC(C=1e4, max_iter=100_000).fit(x, y).score(x, y) == 1.0  # really separable
    model, weight, bias = sklearn_fit(x, y, c)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    fit = fit_logreg(xt, yt, classes, c, tol=1e-7, max_iter=5000)
    assert fit.converged
    reference = float(objective(weight, bias, xt.double(), yt, c, classes))
    ours = float(objective(fit.weight.double(), fit.bias.double(), xt.double(), yt, c, classes))
    above_ours = suboptimality(fit.weight, fit.bias, xt, yt, c, classes)
    above_reference = suboptimality(weight, bias, xt, yt, c, classes)
    rounding = FLOAT64 * abs(reference)  # both values in float64
    assert abs(ours - reference) <= above_ours + above_reference + rounding  # the optimum's value
    assert ours >= reference - above_reference - rounding  # sklearn's point no worse: the same minimum
    query = torch.from_numpy(clusters(200, 12, classes, spread * 2, seed=9)[0])
    agreement = (fit.predict(query).numpy() == model.predict(query.numpy().astype(np.float64))).mean()
    assert agreement >= 0.99
    # the solver's own value at its point, in float32 (or float64 when it finished there)
    assert fit.objective == pytest.approx(ours, rel=0, abs=float32_objective_error(fit.weight, fit.bias, xt, yt, c,
                                                                                   classes))


def test_objective_by_hand():
    # in float64: a check of the formula (tests/tolerance.py)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    # logits [1, 0, 0] and [0, 0, 2]: CE = log(e + 2) - 1 and log(2 + e^2) - 2; penalty |W|^2 / (2 C N) = 2 / 4
    expected = (np.log(np.e + 2) - 1 + np.log(2 + np.e ** 2) - 2) / 2 + 2 / (2 * 1.0 * 2)
    assert float(objective(weight, bias, x, y, c=1.0)) == pytest.approx(expected, rel=FLOAT64)
    # binary: the penalty doubles (sklearn's one-vector form at the same C); logits [1, 0] and [0, 0]
    two = objective(weight[:2], bias[:2], x, torch.tensor([0, 1]), c=1.0)
    assert float(two) == pytest.approx((np.log(np.e + 1) - 1 + np.log(2)) / 2 + 1 / 2, rel=FLOAT64)


def test_warm_start_reaches_the_same_optimum_in_fewer_iterations():
    x, y = clusters(200, 20, 3, 1.5, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cold = fit_logreg(xt, yt, 3, 100.0, tol=1e-6)
    strong = fit_logreg(xt, yt, 3, 10.0, tol=1e-6)
    warm = fit_logreg(xt, yt, 3, 100.0, tol=1e-6, init=(strong.weight, strong.bias))
    assert warm.converged and cold.converged and warm.iterations < cold.iterations
    # both within their suboptimality of the optimum's value, each value as the solver computed it
    allowed = sum(suboptimality(fit.weight, fit.bias, xt, yt, 100.0, 3)
                  + float32_objective_error(fit.weight, fit.bias, xt, yt, 100.0, 3) for fit in (warm, cold))
    assert warm.objective == pytest.approx(cold.objective, rel=0, abs=allowed)


def test_a_fit_stopped_at_its_cap_says_so():
    x, y = clusters(200, 20, 3, 0.3)
    fit = fit_logreg(torch.from_numpy(x), torch.from_numpy(y), 3, 1e5, max_iter=3)
    assert not fit.converged and fit.iterations == 3 and fit.grad_max > 1e-4


def test_float64_continues_where_float32_stalls():
    # A gradient tolerance of 1e-8 on standardised features is below what float32 resolves here: its
    # gradient stops shrinking, and the fit finishes in float64.
    x, y = clusters(300, 40, 5, 2.0, seed=0)
    x = torch.from_numpy(x)
    x = (x - x.mean(0)) / x.std(0)
    fit = fit_logreg(x, torch.from_numpy(y), 5, 1e-3, tol=1e-8, max_iter=2000)
    assert fit.converged and fit.grad_max <= 1e-8 and fit.precision == "float64"
    assert fit.weight.dtype == torch.float32  # handed back in float32 all the same
    assert fit_logreg(x, torch.from_numpy(y), 5, 1e-3).precision == "float32"  # the default tolerance: no need


def test_a_batch_gives_each_fit_its_own_optimum():
    x, y = clusters(150, 16, 3, 1.5, seed=4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cs = [1e-4, 0.01, 1.0, 100.0]
    single = [fit_logreg(xt, yt, 3, c, tol=1e-6) for c in cs]
    strong = fit_logreg(xt, yt, 3, 1e-3, tol=1e-6)
    batch = fit_logreg_batch(xt, yt, 3, cs, tol=1e-6, inits=[None, (strong.weight, strong.bias), None, None])
    for c, alone, together in zip(cs, single, batch):
        allowed = sum(suboptimality(fit.weight, fit.bias, xt, yt, c, 3)
                      + float32_objective_error(fit.weight, fit.bias, xt, yt, c, 3) for fit in (alone, together))
        assert together.converged and together.objective == pytest.approx(alone.objective, rel=0, abs=allowed)
        assert torch.equal(together.predict(xt), alone.predict(xt))
    assert len({fit.iterations for fit in batch}) > 1  # each stopped on its own
