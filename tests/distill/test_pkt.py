"""PKT: the cosine-kernel probability transfer against an independent loop (in float64: a check of the formula,
``tests/tolerance.py``)."""
from __future__ import annotations

import math

import pytest
import torch

from crossmodal.distill.pkt import PKT, pkt_loss
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(embedding: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(embedding), 1, 1, 1)], embedding)


def loop_pkt(student: list[list[float]], teacher: list[list[float]], eps: float = 1e-7) -> float:
    def probabilities(rows):
        unit = [[x / (math.sqrt(sum(v * v for v in row)) + eps) for x in row] for row in rows]
        kernel = [[(sum(a * b for a, b in zip(u, v)) + 1) / 2 for v in unit] for u in unit]
        return [[k / sum(row) for k in row] for row in kernel]

    p, q = probabilities(student), probabilities(teacher)
    n = len(student)
    return sum(q[i][j] * math.log((q[i][j] + eps) / (p[i][j] + eps)) for i in range(n) for j in range(n)) / n ** 2


def test_loss_matches_an_independent_loop():
    student = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    teacher = [[1.0, 2.0, 0.0], [-1.0, 0.5, 1.0], [0.0, 0.0, 3.0]]
    spec_s, spec_t = FeatureSpec((1,), (32,), 2), FeatureSpec((1,), (32,), 3)
    pkt = PKT(spec_s, spec_t, num_samples=3)
    loss = pkt(output(torch.tensor(student, dtype=torch.float64)), output(torch.tensor(teacher, dtype=torch.float64)),
               torch.arange(3)).loss
    assert loss.item() == pytest.approx(loop_pkt(student, teacher), rel=FLOAT64)
    assert loss.item() > 0


def test_scaled_embeddings_give_zero_and_zero_vectors_stay_finite():
    student = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # q log((q + eps) / (p + eps)) with p = q up to rounding: terms of order q FLOAT64, q below one
    assert pkt_loss(student, 3.0 * student).item() == pytest.approx(0.0, abs=FLOAT64)
    with_zero = torch.cat([torch.zeros(1, 4), student[1:]])
    assert torch.isfinite(pkt_loss(with_zero, student))


def test_gradcheck_float64():
    student = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: pkt_loss(s, teacher), (student,))
