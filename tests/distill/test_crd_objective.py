"""CRD's scores and objectives: the NCE and InfoNCE forms against hand computations, the dense and gather
scoring against a plain gather, and shared negatives against per-sample ones in expectation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill.contrast import ContrastSampler, contrast_scores, info_nce_objective, nce_objective

N, K, B = 40, 16, 6


def test_nce_objective_matches_the_formula_by_hand():
    scores = torch.tensor([[0.5, 0.1, -0.3], [0.2, 0.4, 0.0]])
    temperature, z, n = 0.1, 7.0, 5
    loss, grad_positive, grad_negative = nce_objective(scores[:, 0], scores[:, 1:], temperature, z, n)
    grad = torch.cat([grad_positive.unsqueeze(1), grad_negative], 1)
    noise, eps, expected = 2 / 5, 1e-7, 0.0
    for row in scores.tolist():
        p = [math.exp(s / temperature) / z for s in row]
        expected -= math.log(p[0] / (p[0] + noise + eps))
        expected -= sum(math.log(noise / (pk + noise + eps)) for pk in p[1:])
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)
    autograd_scores = scores.double().requires_grad_()
    p = torch.exp(autograd_scores / temperature) / z
    reference = -(torch.log(p[:, 0] / (p[:, 0] + noise + eps)).sum()
                  + torch.log(noise / (p[:, 1:] + noise + eps)).sum()) / 2
    reference.backward()
    torch.testing.assert_close(grad.double(), autograd_scores.grad, rtol=1e-5, atol=1e-7)


def test_info_nce_objective_is_softmax_cross_entropy():
    scores = torch.tensor([[0.5, 0.1, -0.3], [0.2, 0.4, 0.0]])
    loss, grad_positive, grad_negative = info_nce_objective(scores[:, 0], scores[:, 1:], 0.5)
    grad = torch.cat([grad_positive.unsqueeze(1), grad_negative], 1)
    by_hand = sum(-math.log(math.exp(r[0] / 0.5) / sum(math.exp(s / 0.5) for s in r)) for r in scores.tolist()) / 2
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)
    leaf = scores.clone().requires_grad_()
    F.cross_entropy(leaf / 0.5, torch.zeros(2, dtype=torch.long)).backward()
    torch.testing.assert_close(grad, leaf.grad)


@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_scores_and_their_backward_equal_a_plain_gather(scoring):
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(N, 8, generator=generator), dim=1)
    anchor = F.normalize(torch.randn(B, 8, generator=generator), dim=1)
    rows = torch.randint(N, (B, K + 1), generator=generator)
    positive, negative, backward = contrast_scores(anchor, bank[rows[:, 0]], bank, rows[:, 1:], scoring)
    leaf = anchor.clone().requires_grad_()
    plain = torch.bmm(bank[rows], leaf.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(torch.cat([positive.unsqueeze(1), negative], 1), plain.detach())
    weights = torch.randn(B, K + 1, generator=generator)
    (plain * weights).sum().backward()
    torch.testing.assert_close(backward(weights[:, 0], weights[:, 1:].contiguous()), leaf.grad)


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
