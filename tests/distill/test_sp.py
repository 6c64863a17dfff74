"""SP: the similarity-preserving loss on two samples by hand (in float64: a check of the formula,
``tests/tolerance.py``)."""
from __future__ import annotations

import math

import pytest
import torch

from crossmodal.distill.sp import SP, sp_loss
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(features: list[torch.Tensor]) -> EncoderOutput:
    return EncoderOutput(features, torch.zeros(features[0].shape[0], 1))


def normalised_gram(rows: list[list[float]]) -> list[list[float]]:
    gram = [[sum(a * b for a, b in zip(u, v)) for v in rows] for u in rows]
    return [[g / math.sqrt(sum(x * x for x in row)) for g in row] for row in gram]


def test_loss_on_two_samples_by_hand():
    student = [[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 0.0]]          # B=2, C=1, 2x2 when reshaped
    teacher = [[1.0, 1.0, 0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 3.0, 0.0, 1.0]]  # B=2, C=3, 1x2
    g_s, g_t = normalised_gram(student), normalised_gram(teacher)
    expected = sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(2) for j in range(2)) / 4
    student_map = torch.tensor(student, dtype=torch.float64).view(2, 1, 2, 2)
    teacher_map = torch.tensor(teacher, dtype=torch.float64).view(2, 3, 1, 2)
    assert sp_loss(student_map, teacher_map).item() == pytest.approx(expected, rel=FLOAT64)
    spec_s, spec_t = FeatureSpec((1,), (16,), 1), FeatureSpec((3,), (32,), 3)
    result = SP(spec_s, spec_t, num_samples=2)(output([student_map]), output([teacher_map]), torch.arange(2))
    assert result.loss.item() == pytest.approx(expected, rel=FLOAT64)


def test_default_is_the_deepest_stage():
    student = FeatureSpec((4, 8, 16), (8, 16, 32), 16)
    teacher = FeatureSpec((3, 6, 12, 24, 48), (2, 4, 8, 16, 32), 48)
    sp = SP(student, teacher, num_samples=2)
    assert sp.pairs == [(2, 4)]
    assert sp.teacher_needs().stages == frozenset({4})
    assert SP(student, teacher, num_samples=2, stages=[0, -1]).pairs == [(0, 2), (2, 4)]


def test_scaling_a_map_does_not_change_the_loss_and_equal_relations_give_zero():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    teacher = torch.randn(4, 5, 3, 3, generator=generator, dtype=torch.float64)
    loss = float(sp_loss(student, teacher))
    assert float(sp_loss(3.0 * student, teacher)) == pytest.approx(loss, rel=FLOAT64)
    # each normalised Gram row is of norm 1, so rounding leaves differences of order FLOAT64 and squares below it
    assert sp_loss(student, 2.0 * student).item() == pytest.approx(0.0, abs=FLOAT64)
