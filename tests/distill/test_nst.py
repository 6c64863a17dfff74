"""NST: the polynomial-kernel MMD on tiny maps against an explicit double sum (in float64: a check of the formula,
``tests/tolerance.py``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill.nst import NST, nst_loss, poly_kernel
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(features: list[torch.Tensor]) -> EncoderOutput:
    return EncoderOutput(features, torch.zeros(features[0].shape[0], 1))


def loop_mmd(student_rows: list[list[float]], teacher_rows: list[list[float]]) -> float:
    def unit(v):
        n = sum(x * x for x in v) ** 0.5
        return [x / n for x in v]

    def mean_kernel(a, b):
        return sum(sum(x * y for x, y in zip(unit(u), unit(v))) ** 2 for u in a for v in b) / (len(a) * len(b))

    return mean_kernel(teacher_rows, teacher_rows) + mean_kernel(student_rows, student_rows) \
        - 2 * mean_kernel(student_rows, teacher_rows)


def test_loss_on_tiny_maps_matches_an_explicit_sum():
    student = [[1.0, 0.0, 2.0, 1.0], [0.0, 3.0, 1.0, 1.0]]   # C_s=2 channels over a 2x2 map
    teacher = [[1.0, 1.0, 1.0, 0.0]]                        # C_t=1
    student_map = torch.tensor(student, dtype=torch.float64).view(1, 2, 2, 2)
    teacher_map = torch.tensor(teacher, dtype=torch.float64).view(1, 1, 2, 2)
    spec_s, spec_t = FeatureSpec((2,), (8,), 2), FeatureSpec((1,), (8,), 1)
    result = NST(spec_s, spec_t, num_samples=1)(output([student_map]), output([teacher_map]), torch.arange(1))
    assert result.loss.item() == pytest.approx(loop_mmd(student, teacher), rel=FLOAT64)
    assert result.logs["stage_s0_t0"].item() == pytest.approx(loop_mmd(student, teacher), rel=FLOAT64)


def test_poly_kernel_equals_repdistillers_broadcast_form():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    b = torch.randn(2, 4, 5, generator=generator, dtype=torch.float64)
    reference = (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)
    assert poly_kernel(a, b).shape == (2, 4, 3)
    # squared dot products: relative to the squared sum of |a_i b_i|, which may exceed a value near zero
    scale = (a.abs().unsqueeze(1) * b.abs().unsqueeze(2)).sum(-1).pow(2)
    assert ((poly_kernel(a, b) - reference).abs() <= FLOAT64 * scale).all()


def test_equal_patterns_give_zero_and_larger_maps_are_pooled():
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    # three kernel means of order one, two of them cancelling the third: differences of order FLOAT64
    assert nst_loss(feature_map, 2.0 * feature_map).item() == pytest.approx(0.0, abs=FLOAT64)
    student = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    teacher = torch.rand(2, 6, 4, 4, generator=generator, dtype=torch.float64)
    assert float(nst_loss(student, teacher)) == pytest.approx(float(nst_loss(F.avg_pool2d(student, 2), teacher)),
                                                              rel=FLOAT64)


def test_default_stages_skip_the_shallowest():
    student = FeatureSpec((4, 8, 16), (8, 16, 32), 16)
    teacher = FeatureSpec((3, 6, 12, 24), (4, 8, 16, 32), 24)
    nst = NST(student, teacher, num_samples=2)
    assert nst.pairs == [(1, 2), (2, 3)]
    assert nst.teacher_needs().stages == frozenset({2, 3})


def test_gradcheck_float64():
    student = torch.rand(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(2, 2, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: nst_loss(s, teacher), (student,))
