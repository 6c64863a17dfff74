"""CRD's scores and objectives: the NCE and InfoNCE forms against hand computations, the dense and gather
scoring against a plain gather, and shared negatives against per-sample ones in expectation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill.contrast import ContrastSampler, contrast_scores, info_nce_objective, nce_objective
from tolerance import gamma

N, K, B = 40, 16, 6


def test_nce_objective_matches_the_formula_by_hand():
    scores = torch.tensor([[0.5, 0.1, -0.3], [0.2, 0.4, 0.0]])
    temperature, z, n = 0.1, 7.0, 5
    loss, grad_positive, grad_negative = nce_objective(scores[:, 0], scores[:, 1:], temperature, z, n)
    grad = torch.cat([grad_positive.unsqueeze(1), grad_negative], 1)
    noise, eps, expected, bound = 2 / 5, 1e-7, 0.0, 0.0
    for row in scores.tolist():
        p = [math.exp(s / temperature) / z for s in row]
        terms = [-math.log(p[0] / (p[0] + noise + eps))] + [-math.log(noise / (pk + noise + eps)) for pk in p[1:]]
        expected += sum(terms)
        # float32, the objective's own precision: the exponent x = (s - log(Z c) T) / T rounds three times and
        # exp adds two, so q = P / c errs relatively by eq = gamma(3) |x| + gamma(2); a term changes with log q at
        # a rate of at most one, and rounds thrice itself (1 + q, log, the e / (1 + q) term); the sum of the
        # 2 x 3 terms adds gamma(5) of them (tests/tolerance.py)
        exponents = [abs(math.log(pk / noise)) for pk in p]
        bound += sum(gamma(3) * x + gamma(2) for x in exponents) + gamma(3 + 5) * sum(terms)
    assert float(loss) == pytest.approx(expected / 2, rel=0, abs=bound / 2)
    autograd_scores = scores.double().requires_grad_()
    p = torch.exp(autograd_scores / temperature) / z
    reference = -(torch.log(p[:, 0] / (p[:, 0] + noise + eps)).sum()
                  + torch.log(noise / (p[:, 1:] + noise + eps)).sum()) / 2
    reference.backward()
    # the gradient (sigma - [positive]) / (T B), sigma = q / (1 + q): sigma errs by sigma (1 - sigma) eq from q's
    # error and gamma(3) of itself from 1 + q, the division and the scaling
    with torch.no_grad():
        q = p / noise
        sigma = q / (1 + q)
        exponent = torch.log(q).abs()
        grad_bound = (sigma * (1 - sigma) * (gamma(3) * exponent + gamma(2)) + gamma(4)) / (temperature * 2)
    assert ((grad.double() - autograd_scores.grad).abs() <= grad_bound).all()


def test_info_nce_objective_is_softmax_cross_entropy():
    scores = torch.tensor([[0.5, 0.1, -0.3], [0.2, 0.4, 0.0]])
    loss, grad_positive, grad_negative = info_nce_objective(scores[:, 0], scores[:, 1:], 0.5)
    grad = torch.cat([grad_positive.unsqueeze(1), grad_negative], 1)
    by_hand = sum(-math.log(math.exp(r[0] / 0.5) / sum(math.exp(s / 0.5) for s in r)) for r in scores.tolist()) / 2
    # float32: the logits x = s / T round once (their errors reach logsumexp weighted by a softmax, summing to
    # one), logsumexp of C = 3 takes a max, C subtractions and exps, a sum, a log and the max back (gamma(C + 6)
    # of |max| + |lse|), the loss subtracts x_0 and the mean over B = 2 divides: per anchor
    # gamma(1) (max|x| + |x_0|) + gamma(C + 8) (2 max|x| + |lse - x_0|), averaged
    logits = [[s / 0.5 for s in row] for row in scores.tolist()]
    terms = [math.log(sum(math.exp(v) for v in x)) - x[0] for x in logits]  # lse - x_0, each anchor's loss
    bound = sum(gamma(1) * (max(map(abs, x)) + abs(x[0])) + gamma(3 + 8) * (2 * max(map(abs, x)) + term)
                for x, term in zip(logits, terms))
    assert float(loss) == pytest.approx(by_hand, rel=0, abs=bound / 2)
    leaf = scores.clone().requires_grad_()
    F.cross_entropy(leaf / 0.5, torch.zeros(2, dtype=torch.long)).backward()
    # two float32 evaluations of (softmax - [positive]) / (T B): each softmax value errs by its exponent's error
    # (gamma(4) max|x|: the logits, the subtraction of the log-normaliser and its own error) plus gamma(C + 4)
    # relatively; summed over the two evaluations
    largest = max(max(map(abs, x)) for x in logits)
    torch.testing.assert_close(grad, leaf.grad, rtol=0, atol=2 * (gamma(4) * largest + gamma(3 + 4)) / (0.5 * 2))


@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_scores_and_their_backward_equal_a_plain_gather(scoring):
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(N, 8, generator=generator), dim=1)
    anchor = F.normalize(torch.randn(B, 8, generator=generator), dim=1)
    rows = torch.randint(N, (B, K + 1), generator=generator)
    positive, negative, backward = contrast_scores(anchor, bank[rows[:, 0]], bank, rows[:, 1:], scoring)
    leaf = anchor.clone().requires_grad_()
    plain = torch.bmm(bank[rows], leaf.unsqueeze(2)).squeeze(2)
    # dot products of unit 8-vectors, each within gamma(8) of the exact one
    torch.testing.assert_close(torch.cat([positive.unsqueeze(1), negative], 1), plain.detach(), rtol=0,
                               atol=2 * gamma(8))
    weights = torch.randn(B, K + 1, generator=generator)
    (plain * weights).sum().backward()
    # each anchor's gradient sums K + 1 unit rows times their weights: within gamma(K + 1) sum |w| on each side
    largest = float(weights.abs().sum(1).max())
    torch.testing.assert_close(backward(weights[:, 0], weights[:, 1:].contiguous()), leaf.grad, rtol=0,
                               atol=2 * gamma(K + 1) * largest)


def test_shared_negatives_equal_per_sample_negatives_in_expectation():
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(N, 8, generator=generator), dim=1)
    anchor = F.normalize(torch.randn(B, 8, generator=generator), dim=1)
    index = torch.arange(B)
    z, temperature = 30.0, 0.2
    # exact expectation: the positive term plus K times the mean negative term over the bank
    positive, negative, _ = contrast_scores(anchor, bank[index], bank, torch.arange(N).expand(B, N).contiguous())
    p = torch.exp(torch.cat([positive.unsqueeze(1), negative], 1).double() / temperature) / z
    noise, eps = K / N, 1e-7
    expected = float((-torch.log(p[:, 0] / (p[:, 0] + noise + eps))
                      - K * torch.log(noise / (p[:, 1:] + noise + eps)).mean(1)).mean())
    draws = 1500
    per_sample = ContrastSampler(N, K, seed=5)  # one draw for `draws` copies of the batch at once
    positives, negatives = per_sample.draw(index.repeat(draws))
    positive, negative, _ = contrast_scores(anchor.repeat(draws, 1), bank[positives], bank, negatives, "dense")
    q = torch.exp(torch.cat([positive.unsqueeze(1), negative], 1).double() / temperature) / z
    per_anchor = -torch.log(q[:, 0] / (q[:, 0] + noise + eps)) - torch.log(noise / (q[:, 1:] + noise + eps)).sum(1)
    per_sample_losses = per_anchor.view(draws, B).mean(1)
    shared = ContrastSampler(N, K, shared=True, seed=5)
    shared_losses = []
    for _ in range(draws):
        positives, negatives = shared.draw(index)
        positive, negative, _ = contrast_scores(anchor, bank[positives], bank, negatives)
        shared_losses.append(float(nce_objective(positive, negative, temperature, z, N)[0]))
    for losses in (per_sample_losses, torch.tensor(shared_losses, dtype=torch.float64)):
        assert abs(float(losses.mean()) - expected) < 4 * float(losses.std()) / math.sqrt(draws)
