"""Rounding bounds of CRD's float32 arithmetic for the CRD tests (``tests/tolerance.py`` states the rules): one
step against RepDistiller's code run in float64, Z, bank updates, and the heads' anchors."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tolerance import gamma


def linear_condition(linear: torch.nn.Linear, x: torch.Tensor) -> float:
    """kappa = max over rows of |(|W||x| + |b|)| / |W x + b|: how much a linear layer's rounding, relative to the
    magnitudes of its terms, grows relative to its output."""
    with torch.no_grad():
        magnitudes = x.abs() @ linear.weight.abs().T + linear.bias.abs()
        return float((magnitudes.norm(dim=1) / linear(x).norm(dim=1)).max())


def standardised_error(h: torch.Tensor, z: torch.Tensor, count: int, relative: torch.Tensor | float = 0.0) -> float:
    """The rounding bound of one float32 evaluation of the unit rows of a BatchNorm head, normalize(z) for the
    standardised z of the head's output ``h``, whose moments are sums over ``count`` rows: the mean and the
    subtraction err by gamma(count + 1) of the column's largest |h|, which the standard deviation turns into
    e = gamma(count + 1) max|h| / std per column (the centring's cancellation); a standardised value errs by
    e (1 + |z|) + gamma(count + 4) |z| (the variance's sum and the rsqrt), plus ``relative`` |z| for an error
    ``h`` itself carries; the unit row by that over |z|, plus the normalisation's gamma(d + 3)."""
    e = gamma(count + 1) * h.abs().max(0).values / h.std(0, unbiased=False)
    dz = relative * z.abs() + e * (1 + z.abs()) + gamma(count + 4) * z.abs()
    return float((dz.norm(dim=1) / z.norm(dim=1)).max()) + gamma(h.shape[1] + 3)


def z_tolerance(scores: torch.Tensor, row_norm: float, dim: int, temperature: float = 0.07) -> float:
    """The relative difference two float32 evaluations of Z = N mean(exp(s / T)) may show on the same unit
    anchors and bank rows (of norm at most ``row_norm``, ``dim`` wide), summed over the two: each score, a dot product of
    length d, is off by gamma(d) row_norm, which exp(s / T) turns into a relative error over T; s / T rounds
    (gamma(2) |s| / T, a product with 1 / T or a division), exp adds gamma(2), the mean of the n scores gamma(n)
    (``tests/tolerance.py``)."""
    n, d = scores.numel(), dim
    one = gamma(d) * row_norm / temperature + gamma(2) * float(scores.abs().max()) / temperature + gamma(2) \
        + gamma(n)
    return 2 * one


def mixed_row_tolerance(before: torch.Tensor, embed: torch.Tensor, momentum: float) -> float:
    """The difference two float32 evaluations of a bank update normalize(mu m + (1 - mu) e) may show, summed over
    the two: the mix rounds twice relative to |mu |m| + (1 - mu) |e||, which normalising divides by the mix's
    norm (its cancellation, kappa), and normalising adds gamma(d + 3) (squares, sum, sqrt, divide)."""
    mixed = momentum * before + (1 - momentum) * embed
    kappa = float(((momentum * before.abs() + (1 - momentum) * embed.abs()).norm(dim=1) / mixed.norm(dim=1)).max())
    return 2 * (gamma(2) * kappa + gamma(before.shape[1] + 3))


def float32_bounds(reference, x_s: torch.Tensor, x_t: torch.Tensor, contrast: torch.Tensor, bank_error: float,
                   z_error: dict[str, float]) -> dict[str, float]:
    """How far this step's float32 results may lie from the float64 reference's, from the arithmetic alone
    (``tests/tolerance.py``: u, gamma), on the reference's float64 state before the step. First order in u:

    - a head's output h = W x + b (din inputs) is off by |dh| <= gamma(din + 1) |(|W||x| + |b|)|, so the unit
      anchor v = h / |h| by ev <= |dh| / |h| + gamma(d + 3) (squares, sum, sqrt, divide);
    - a score s = m . v against a bank row m that is itself off by eb: ds <= |m| (ev + gamma(d)) + eb;
    - Z (set by the first step) is N times the float32 mean of the n = B (K + 1) values exp(s / T): a relative error
      of at most ds / T + gamma(2) |s| / T (the product s (1 / T)) + gamma(2) (exp) + gamma(n) (the sum);
    - q = exp((s - log(Z K / N) T) / T) then errs (relatively) by eq <= ds / T + dZ + gamma(3) |s - ...| / T
      + gamma(2); a loss term log(1 + q) (a negative) or log1p(1 / q) (the positive) changes with log q at the
      rate |sigma - [positive]|, sigma = q / (1 + q), so the loss, the sum of the B (K + 1) terms of each
      direction over B, errs by eq sum |sigma - [positive]| / B plus gamma(B (K + 1) + 3) of itself;
    - the gradient of a score, g = (sigma - [positive]) / (T B), errs by (sigma (1 - sigma) eq + gamma(3)) / (T B);
      the anchor's gradient, g summed with the K + 1 rows, by that times |m| summed plus
      (eb + gamma(K + 1) |m|) sum |g|; then through the normalisation (3 ev + gamma(d + 3) of it, over |h|) and
      the head (gamma(d) of W^T times it; gamma(B) for the weight gradient's sum over the batch);
    - the bank rows normalize(mu m + (1 - mu) v) by (mu eb + (1 - mu) ev + gamma(2)) / |mu m + (1 - mu) v|
      + gamma(d + 3).

    Returns the bounds by name (absolute, except Z's, which is relative) and the bank error after the step.
    """
    T, mu, K, N = reference.t, reference.m, reference.k, reference.n
    B, d = contrast.shape[0], reference.memory_v1.shape[1]
    bounds = {"loss": 0.0, "bank": bank_error}
    for side, head, x, bank, own_bank in (("student", reference.embed_s, x_s, reference.memory_v2, reference.memory_v1),
                                          ("teacher", reference.embed_t, x_t, reference.memory_v1, reference.memory_v2)):
        with torch.no_grad():
            h = head(x)
        h_norm = h.norm(dim=1)
        v = h / h_norm[:, None]
        ev = gamma(x.shape[1] + 1) * linear_condition(head, x) + gamma(d + 3)
        rows = bank[contrast]  # (B, K + 1, d)
        row_norm = float(rows.norm(dim=2).max())
        scores = torch.einsum("bkd,bd->bk", rows, v)
        ds = row_norm * (ev + gamma(d)) + bank_error
        if side not in z_error:  # Z is set by the first step and fixed after it
            z_error[side] = ds / T + gamma(2) * float(scores.abs().max()) / T + gamma(2) + gamma(scores.numel())
        z = float(torch.exp(scores / T).mean()) * N if reference.z_v1 < 0 else (
            reference.z_v1 if side == "student" else reference.z_v2)
        log_scale = math.log(z * K / N) * T
        eq = ds / T + z_error[side] + gamma(3) * float((scores - log_scale).abs().max()) / T + gamma(2)
        q = torch.exp((scores - log_scale) / T)
        sigma = q / (1 + q)  # the derivative of each loss term in log q, up to sign
        positive = F.one_hot(torch.zeros(B, dtype=torch.long), K + 1)
        terms = torch.cat([torch.log1p(1 / q[:, :1]), torch.log1p(q[:, 1:])], 1)
        bounds["loss"] += (eq * float((sigma - positive).abs().sum())
                           + gamma(terms.numel() + 3) * float(terms.sum())) / B
        g = (sigma - positive) / (T * B)
        anchor_grad = torch.einsum("bk,bkd->bd", g, rows)
        d_g = (sigma * (1 - sigma) * eq + gamma(3)) / (T * B)
        d_anchor = (d_g * rows.norm(dim=2)).sum(1) + (bank_error + gamma(K + 1) * row_norm) * g.abs().sum(1)
        d_h = (d_anchor + anchor_grad.norm(dim=1) * (3 * ev + gamma(d + 3))) / h_norm  # (B,)
        h_grad = (anchor_grad - v * (v * anchor_grad).sum(1, keepdim=True)) / h_norm[:, None]
        weight = head.weight.detach()
        bounds[f"{side}_weight_grad"] = float((d_h * x.abs().max(1).values).sum()
                                              + gamma(B) * (h_grad.abs().T @ x.abs()).max())
        if side == "student":
            bounds["input_grad"] = float((torch.linalg.matrix_norm(weight, 2) * d_h
                                          + gamma(d) * weight.norm() * h_grad.norm(dim=1)).max())
        mixed = mu * own_bank[contrast[:, 0]] + (1 - mu) * v
        bounds["bank"] = max(bounds["bank"], float(((mu * bank_error + (1 - mu) * ev + gamma(2))
                                                    / mixed.norm(dim=1)).max()) + gamma(d + 3))
    return bounds
