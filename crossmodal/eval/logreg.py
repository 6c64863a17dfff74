"""L2-penalised multinomial logistic regression in torch: full-batch L-BFGS on the CPU or an accelerator.

It minimises scikit-learn's objective for ``LogisticRegression(C=c, solver="lbfgs")`` ([0]), so the two
solvers agree on the optimum:

    f(W, b) = mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C N)        (the bias is not penalised)

With two classes scikit-learn fits one weight vector ``w`` (logistic loss, penalty ``||w||^2 / 2CN``); the
two-row softmax fitted here with penalty ``||W||^2 / CN`` has the same optimum (``W = [-w/2, w/2]``) and the
same objective value, so a binary fit doubles the penalty.

The stopping rule is scikit-learn's: the largest absolute gradient entry at most ``tol``. A fit runs in
float32 and continues in float64 when float32 stops making progress above the tolerance; one that stops at
its iteration cap says so (``converged=False``). Several C are fitted as one batch (one pass over the
features serves all of them), and each fit is preconditioned by its features' second moments, which works
best on decorrelated coordinates (:mod:`crossmodal.eval.decorrelate`).

- [0] scikit-learn, ``sklearn.linear_model.LogisticRegression``, https://scikit-learn.org
- [1] DINOv2, Oquab et al., 2023, ``dinov2/eval/log_regression.py`` (L-BFGS probes on the accelerator),
  https://arxiv.org/abs/2304.07193
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000
STALL_ITERATIONS = 50  # iterations in which neither f (beyond rounding) nor the largest gradient improved
HISTORY = 10  # stored step pairs, as scipy's L-BFGS-B (which scikit-learn uses)


@dataclass
class LogRegFit:
    """A fitted probe: ``logits = x @ weight.T + bias``.

    Attributes:
        weight: (K, D); bias: (K,), float32 on the fit's device.
        iterations: L-BFGS iterations run.
        converged: the largest gradient entry reached ``tol`` (False: stopped at the iteration cap).
        grad_max: the largest absolute gradient entry at the end.
        objective: ``f`` at the end.
        precision: ``float32``, or ``float64`` when the fit had to continue in it.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    converged: bool
    grad_max: float
    objective: float
    precision: str = "float32"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """The class index of every row of ``x`` (N,), on ``x``'s device."""
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        return torch.cat([self.logits(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)])


def penalty_scale(c: float, num_samples: int, num_classes: int) -> float:
    """The factor ``lambda`` of ``lambda * ||W||^2`` in ``f``: ``1 / (2 C N)``, doubled for a binary fit."""
    return (2.0 if num_classes == 2 else 1.0) / (2.0 * c * num_samples)


def objective(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, c: float,
              num_classes: Optional[int] = None) -> torch.Tensor:
    """``f(W, b)`` on (x, y) for the inverse regularisation ``c``.

    Examples:
        >>> x, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 1])
        >>> float(objective(torch.zeros(3, 1), torch.zeros(3), x, y, c=1.0))  # log(3): uniform over 3 classes
        1.0986...
    """
    num_classes = num_classes or weight.shape[0]
    loss = F.cross_entropy(x @ weight.T + bias, y)
    return loss + penalty_scale(c, len(x), num_classes) * weight.pow(2).sum()


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, *,
               init: Optional[tuple[torch.Tensor, torch.Tensor]] = None, max_iter: int = DEFAULT_MAX_ITER,
               tol: float = DEFAULT_TOL) -> LogRegFit:
    """Minimise ``f`` on (x, y) for one ``c``: :func:`fit_logreg_batch` with a batch of one.

    Args:
        x: (N, D) features (float32; standardised, or in decorrelated coordinates).
        y: (N,) class indices in ``0 .. num_classes - 1``, on ``x``'s device.
        c: the inverse regularisation strength (scikit-learn's ``C``).
        init: (weight, bias) to start from, e.g. the fit of a neighbouring ``C`` (a warm start).
        max_iter: the iteration cap, over both precisions.
        tol: stop when the largest absolute gradient entry (in ``W`` and ``b``) is at most this.
    """
    return fit_logreg_batch(x, y, num_classes, [c], inits=[init], max_iter=max_iter, tol=tol)[0]


def fit_logreg_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, cs: Sequence[float], *,
                     inits: Optional[Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]]] = None,
                     max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL) -> list[LogRegFit]:
    """Minimise ``f`` on (x, y) for every C of ``cs`` at once, by preconditioned L-BFGS.

    The fits are independent problems (each has its own iterates, line search, history and stopping), but
    every evaluation of the objective is one pass over ``x`` for all of them: ``x @ W^T`` with the weights of
    every unfinished fit side by side. On a CPU a pass over a large ``x`` costs about as much for 12 fits as
    for one (it is bound by reading ``x``); on small problems one call replaces many.

    Each fit's weights are parametrised as ``W = V diag(scale)`` with ``scale_j = (kappa m_j + 2 lambda)^-1/2``
    from each feature's second moment ``m_j`` (``kappa = (1 - 1/K) / K``, the softmax curvature at uniform
    posteriors): the Hessian's diagonal becomes about one. On features whose columns are uncorrelated (the
    coordinates of :func:`~crossmodal.eval.decorrelate.decorrelate`) this removes most of the ill-conditioning that makes plain L-BFGS take
    thousands of steps; on standardised features it is the identity. The stopping rule is on the gradient in
    ``W`` and ``b``, as scikit-learn's. A fit runs in float32 and continues in float64 when float32 stops making
    progress above the tolerance.

    Returns:
        one :class:`LogRegFit` per C, in the order of ``cs``.
    """
    cs = [float(c) for c in cs]
    count, dim = len(cs), x.shape[1]
    inits = list(inits) if inits is not None else [None] * count
    penalties = torch.tensor([penalty_scale(c, len(x), num_classes) for c in cs], device=x.device)
    kappa = (1.0 - 1.0 / num_classes) / num_classes
    moments = x.norm(dim=0).pow(2) / max(1, len(x))
    scales = (kappa * moments[None, :] + 2.0 * penalties[:, None]).rsqrt()
    theta = torch.zeros(count, num_classes * (dim + 1), device=x.device)
    for row, init in enumerate(inits):
        if init is not None:
            weight, bias = (tensor.detach().to(x.device, torch.float32) for tensor in init)
            theta[row] = torch.cat([(weight / scales[row]).reshape(-1), bias])
    fits: list[Optional[LogRegFit]] = [None] * count
    pending = torch.arange(count, device=x.device)
    used = torch.zeros(count, dtype=torch.long, device=x.device)
    for dtype in (torch.float32, torch.float64):
        problem = _Batch(x.to(dtype), y, num_classes, penalties[pending].to(dtype), scales[pending].to(dtype))
        result = _lbfgs(problem, theta[pending].to(dtype), max_iter - used[pending], tol)
        used[pending] += result.iterations
        for position, row in enumerate(pending.tolist()):
            theta[row] = result.theta[position].float()
            weight = result.theta[position, :-num_classes].view(num_classes, dim) * problem.scales[position]
            fits[row] = LogRegFit(weight.float(), result.theta[position, -num_classes:].float(), int(used[row]),
                                  bool(result.grad_max[position] <= tol), float(result.grad_max[position]),
                                  float(result.values[position]), str(dtype).replace("torch.", ""))
        # float32 stopped making progress above the tolerance: go on in float64 where iterations are left
        again = result.stalled & (used[pending] < max_iter)
        pending = pending[again]
        if len(pending) == 0:
            break
    return [fit for fit in fits if fit is not None]


class _Batch:
    """``f`` and its gradient for a batch of fits, in the preconditioned variables ``theta = [V.flatten(), b]``
    (one row per fit), computed by hand: two matrix products a call, over the fits asked for."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, penalties: torch.Tensor,
                 scales: torch.Tensor) -> None:
        self.x, self.y, self.num_classes, self.penalties, self.scales = x, y, num_classes, penalties, scales

    def __call__(self, theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, gradient, largest original-variable gradient entry) of the fits ``rows`` at ``theta`` (one row
        each)."""
        count, k, num = len(rows), self.num_classes, len(self.x)
        scale, penalty = self.scales[rows][:, None, :], self.penalties[rows]
        weight = theta[:, :-k].view(count, k, -1) * scale
        bias = theta[:, -k:]
        logits = (self.x @ weight.reshape(count * k, -1).T).view(num, count, k) + bias
        log_norm = torch.logsumexp(logits, 2)
        target = self.y.view(num, 1, 1).expand(num, count, 1)
        values = (log_norm - logits.gather(2, target).squeeze(2)).mean(0) + penalty * weight.pow(2).sum((1, 2))
        residual = torch.exp(logits - log_norm[..., None])
        residual.scatter_add_(2, target, torch.full_like(residual[..., :1], -1.0))
        residual /= num
        grad_weight = (residual.reshape(num, count * k).T @ self.x).view(count, k, -1)
        grad_weight += (2.0 * penalty)[:, None, None] * weight
        grad_bias = residual.sum(0)
        grad = torch.cat([(grad_weight * scale).reshape(count, -1), grad_bias], 1)
        grad_max = torch.maximum(grad_weight.abs().amax((1, 2)), grad_bias.abs().amax(1))
        return values, grad, grad_max


@dataclass
class _Outcome:
    theta: torch.Tensor
    iterations: torch.Tensor
    grad_max: torch.Tensor
    values: torch.Tensor
    stalled: torch.Tensor


def _lbfgs(problem: _Batch, theta: torch.Tensor, max_iter: torch.Tensor, tol: float,
           history: int = HISTORY) -> _Outcome:
    """Batched L-BFGS (two-loop recursion, backtracking Armijo line search) on smooth strictly convex ``f``s.

    A fit stops at the tolerance, at its ``max_iter``, or when it stalls: ``f`` rose beyond its rounding
    error, a step shrank to nothing, or neither ``f`` nor the gradient improved for
    :data:`STALL_ITERATIONS` iterations (the caller may continue a stalled fit in float64).
    """
    count = len(theta)
    everyone = torch.arange(count, device=theta.device)
    values, grad, grad_max = problem(theta, everyone)
    noise = 64 * torch.finfo(theta.dtype).eps  # the relative rounding error of f, generously
    changes: list[torch.Tensor] = []  # the last `history` steps (count, P), zero rows where a fit skipped
    grad_changes: list[torch.Tensor] = []
    rhos: list[torch.Tensor] = []  # 1 / curvature, 0 where the pair is not used
    gamma = torch.ones(count, dtype=theta.dtype, device=theta.device)
    has_pair = torch.zeros(count, dtype=torch.bool, device=theta.device)
    iterations = torch.zeros(count, dtype=torch.long, device=theta.device)
    stalled = torch.zeros(count, dtype=torch.bool, device=theta.device)
    best_grad, best_value = grad_max.clone(), values.clone()
    best_grad_at = torch.zeros(count, dtype=torch.long, device=theta.device)
    best_value_at = best_grad_at.clone()
    while True:
        active = ((grad_max > tol) & (iterations < max_iter) & ~stalled).nonzero().squeeze(1)
        if len(active) == 0:
            break
        g = grad[active]
        direction = _two_loop(g, [c[active] for c in changes], [d[active] for d in grad_changes],
                              [r[active] for r in rhos], gamma[active])
        slope = (g * direction).sum(1)
        uphill = slope >= 0  # not a descent direction (rounding): restart that fit from steepest descent
        if bool(uphill.any()):
            direction[uphill], slope[uphill] = -g[uphill], -(g[uphill] * g[uphill]).sum(1)
            for rho in rhos:
                rho[active[uphill]] = 0.0
            has_pair[active[uphill]] = False
        step = torch.where(has_pair[active], torch.ones_like(slope),
                           (1.0 / g.abs().sum(1).clamp_min(1e-12)).clamp_max(1.0))
        new_theta, new_values, new_grad, new_max = theta[active].clone(), values[active].clone(), g.clone(), \
            grad_max[active].clone()
        moved = torch.zeros(len(active), dtype=torch.bool, device=theta.device)
        trying = torch.arange(len(active), device=theta.device)
        while len(trying):
            candidate = theta[active[trying]] + step[trying, None] * direction[trying]
            trial_values, trial_grad, trial_max = problem(candidate, active[trying])
            old = values[active[trying]]
            accept = trial_values <= old + 1e-4 * step[trying] * slope[trying]
            # Near the optimum f's change drops below its rounding error and the value test is noise. The
            # slope along the step still tells: on a near-quadratic f, f decreased iff the slope at the new
            # point is below minus the slope at the old one.
            accept |= (((trial_values - old).abs() <= noise * old.abs())
                       & ((trial_grad * direction[trying]).sum(1) <= -0.9 * slope[trying]))
            done = trying[accept]
            new_theta[done], new_values[done] = candidate[accept], trial_values[accept]
            new_grad[done], new_max[done] = trial_grad[accept], trial_max[accept]
            moved[done] = True
            step[trying[~accept]] *= 0.5
            tiny = trying[~accept][step[trying[~accept]] < 1e-12]
            stalled[active[tiny]] = True  # no step decreases f at this precision
            trying = trying[~accept][step[trying[~accept]] >= 1e-12]
        change = torch.zeros_like(theta)
        grad_change = torch.zeros_like(theta)
        change[active] = torch.where(moved[:, None], new_theta - theta[active], 0.0)
        grad_change[active] = torch.where(moved[:, None], new_grad - g, 0.0)
        curvature = (change * grad_change).sum(1)
        usable = curvature > 1e-12 * (grad_change * grad_change).sum(1)
        rho = torch.where(usable, 1.0 / curvature.where(usable, torch.ones_like(curvature)), 0.0)
        changes, grad_changes, rhos = [*changes, change][-history:], [*grad_changes, grad_change][-history:], \
            [*rhos, rho][-history:]
        gamma = torch.where(usable, curvature / (grad_change * grad_change).sum(1).where(usable, torch.ones_like(
            curvature)), gamma)
        has_pair |= usable
        rose = new_values > values[active] + noise * values[active].abs()
        theta[active], values[active], grad[active], grad_max[active] = new_theta, new_values, new_grad, new_max
        iterations[active[moved]] += 1
        improved_grad = grad_max < best_grad
        best_grad, best_grad_at = torch.where(improved_grad, grad_max, best_grad), \
            torch.where(improved_grad, iterations, best_grad_at)
        improved_value = values < best_value - noise * values.abs()
        best_value, best_value_at = torch.where(improved_value, values, best_value), \
            torch.where(improved_value, iterations, best_value_at)
        quiet = torch.minimum(iterations - best_grad_at, iterations - best_value_at) > STALL_ITERATIONS
        stalled[active[rose]] = True
        stalled |= quiet & (grad_max > tol)
    return _Outcome(theta, iterations, grad_max, values, stalled & (grad_max > tol))


def _two_loop(grad: torch.Tensor, changes: list[torch.Tensor], grad_changes: list[torch.Tensor],
              rhos: list[torch.Tensor], gamma: torch.Tensor) -> torch.Tensor:
    """The L-BFGS directions ``-H grad`` (one row per fit) from the stored pairs; a pair with rho = 0 is
    skipped (its contributions vanish)."""
    direction = -grad.clone()
    alphas = []
    for change, grad_change, rho in zip(reversed(changes), reversed(grad_changes), reversed(rhos)):
        alpha = rho * (change * direction).sum(1)
        direction -= alpha[:, None] * grad_change
        alphas.append(alpha)
    direction *= gamma[:, None]
    for change, grad_change, rho, alpha in zip(changes, grad_changes, rhos, reversed(alphas)):
        beta = rho * (grad_change * direction).sum(1)
        direction += (alpha - beta)[:, None] * change
    return direction
