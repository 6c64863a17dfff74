"""How close a fitted logistic regression lies to the optimum, and how far float32 puts its objective's value: the
tolerances of the probe tests, from the solver's stopping rule and the arithmetic (``tests/tolerance.py``).

f(W, b) = mean cross-entropy + lambda |W|^2 is convex and smooth, and near its minimum it is the quadratic
1/2 d^T H d in the step d to the optimum (H its Hessian there). A point whose gradient is g then lies about
|g| / lambda_min from the optimum and about |g|^2 / (2 lambda_min) above its value, lambda_min the smallest
eigenvalue of H over the directions f depends on (adding one number to every bias changes nothing, and no
gradient has a part along that direction). A fit stopped at |g|_inf <= tol is so close; the tests below take g
and H at the fitted point, in float64.
"""
from __future__ import annotations

import math

import torch

from crossmodal.eval.logreg import objective
from tolerance import gamma


def _curvature(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float,
               classes: int) -> tuple[torch.Tensor, float]:
    """f's gradient (flat, float64) and lambda_min at (weight, bias)."""
    x = x.double()
    shape = weight.shape
    theta = torch.cat([weight.double().flatten(), bias.double()])

    def f(flat: torch.Tensor) -> torch.Tensor:
        return objective(flat[:shape.numel()].view(shape), flat[shape.numel():], x, y, c, classes)

    grad = torch.autograd.functional.jacobian(f, theta)
    hessian = torch.autograd.functional.hessian(f, theta)
    uniform_bias = torch.cat([torch.zeros(shape.numel()), torch.ones(len(bias))]).double() / math.sqrt(len(bias))
    basis = torch.linalg.qr(torch.cat([uniform_bias[:, None], torch.eye(len(theta), dtype=torch.float64)], 1))[0]
    complement = basis[:, 1:]  # an orthonormal basis of the directions f depends on
    return grad, float(torch.linalg.eigvalsh(complement.T @ hessian @ complement).min())


def suboptimality(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float,
                  classes: int) -> float:
    """|g|^2 / (2 lambda_min): how far above the optimum's value f(weight, bias) lies."""
    grad, smallest = _curvature(weight, bias, x, y, c, classes)
    return float(grad.pow(2).sum()) / (2 * smallest)


def distance_to_optimum(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float,
                        classes: int) -> float:
    """|g| / lambda_min: how far (in the Euclidean norm over every weight and bias) the optimum lies."""
    grad, smallest = _curvature(weight, bias, x, y, c, classes)
    return float(grad.norm()) / smallest


def float32_objective_error(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float,
                            classes: int) -> float:
    """The rounding bound of one float32 evaluation of f at (weight, bias): each logit, a dot product of D + 1
    terms, errs by gamma(D + 1) of sum |x w| + |b|; a sample's cross-entropy, logsumexp (max, K subtractions and
    exps, a sum, a log, the max back) minus its class's logit, by twice the largest logit error plus
    gamma(K + 6) of |max| + |lse|; their mean by gamma(N) of it; the penalty, a sum of K D squares times lambda,
    by gamma(K D + 2) of itself."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    logits = x @ weight.T + bias
    logit_error = gamma(x.shape[1] + 1) * (x.abs() @ weight.abs().T + bias.abs()).max(1).values
    lse = torch.logsumexp(logits, 1)
    per_sample = 2 * logit_error + gamma(classes + 6) * (logits.max(1).values.abs() + lse.abs())
    cross_entropy = float((lse - logits.gather(1, y.long()[:, None]).squeeze(1)).mean())
    penalty = float(objective(weight, bias, x, y, c, classes)) - cross_entropy
    return float(per_sample.mean()) + gamma(len(x)) * cross_entropy + gamma(weight.numel() + 2) * penalty
