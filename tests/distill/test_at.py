"""AT: attention maps by hand, default stages, and the shared spatial matching. Formulas are checked in float64
(``tests/tolerance.py``)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill.spatial import match_spatial
from crossmodal.distill.at import AT, at_loss, attention_map
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(features: list[torch.Tensor]) -> EncoderOutput:
    return EncoderOutput(features, torch.zeros(features[0].shape[0], 1))


def test_loss_on_a_1x2x2x2_map_by_hand():
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]], dtype=torch.float64)
    teacher = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [1.0, 1.0]]]], dtype=torch.float64)
    # mean over the two channels of the squares, then l2-normalised
    student_att = [(1 + 0) / 2, (4 + 1) / 2, (9 + 0) / 2, (16 + 1) / 2]
    teacher_att = [(1 + 4) / 2, (0 + 4) / 2, (0 + 1) / 2, (1 + 1) / 2]
    student_norm = math.sqrt(sum(v * v for v in student_att))
    teacher_norm = math.sqrt(sum(v * v for v in teacher_att))
    expected = sum((s / student_norm - t / teacher_norm) ** 2 for s, t in zip(student_att, teacher_att)) / 4
    spec = FeatureSpec((2,), (8,), 2)
    result = AT(spec, spec, num_samples=1, stages=[0])(output([student]), output([teacher]), torch.arange(1))
    assert result.loss.item() == pytest.approx(expected, rel=FLOAT64)
    assert result.logs["stage_s0_t0"].item() == pytest.approx(expected, rel=FLOAT64)


def test_default_stages_skip_the_shallowest_aligned_stage_and_sum():
    student = FeatureSpec((4, 8, 16), (8, 16, 32), 16)
    teacher = FeatureSpec((3, 6, 12, 24), (4, 8, 16, 32), 24)
    at = AT(student, teacher, num_samples=2)
    assert at.pairs == [(1, 2), (2, 3)]
    assert at.teacher_needs().stages == frozenset({2, 3})
    generator = torch.Generator().manual_seed(0)
    student_maps = [torch.randn(2, c, 8 // 2 ** i, 8 // 2 ** i, generator=generator, dtype=torch.float64)
                    for i, c in enumerate(student.channels)]
    teacher_maps = [torch.randn(2, c, 16 // 2 ** i, 16 // 2 ** i, generator=generator, dtype=torch.float64)
                    for i, c in enumerate(teacher.channels)]
    result = at(output(student_maps), output(teacher_maps), torch.arange(2))
    expected = at_loss(student_maps[1], teacher_maps[2], 2) + at_loss(student_maps[2], teacher_maps[3], 2)
    assert float(result.loss) == pytest.approx(float(expected), rel=FLOAT64)
    assert set(result.logs) == {"stage_s1_t2", "stage_s2_t3"}


def test_single_stage_encoders_use_their_only_stage():
    spec = FeatureSpec((4,), (32,), 4)
    assert AT(spec, spec, num_samples=2).pairs == [(0, 0)]


def test_larger_map_is_pooled_to_the_smaller():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 5, 4, 4, generator=generator, dtype=torch.float64)
    expected = at_loss(F.avg_pool2d(student, 2), teacher, 2)
    assert float(at_loss(student, teacher, 2)) == pytest.approx(float(expected), rel=FLOAT64)
    assert float(at_loss(teacher, student, 2)) == pytest.approx(float(at_loss(teacher, F.avg_pool2d(student, 2), 2)),
                                                                rel=FLOAT64)


def test_match_spatial_pools_each_axis_separately_and_keeps_equal_maps():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 6, 2, generator=generator), torch.randn(2, 5, 3, 4, generator=generator)
    pooled_student, pooled_teacher = match_spatial(student, teacher)
    assert pooled_student.shape == (2, 3, 3, 2) and pooled_teacher.shape == (2, 5, 3, 2)
    assert torch.equal(pooled_student, F.adaptive_avg_pool2d(student, (3, 2)))  # that pooling itself
    same = torch.randn(1, 2, 5, 7)
    assert match_spatial(same, same)[0] is same


def test_gradcheck_float64():
    student = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.rand(2, 2, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: at_loss(s, teacher, 2.0), (student,))


def test_attention_map_is_f_to_the_p_signed_for_odd_p():
    # RepDistiller's f.pow(p): |f|^p for even p, signed for odd p on negative activations
    feature_map = torch.tensor([[[[-2.0, 1.0]], [[-2.0, 3.0]]]], dtype=torch.float64)  # B=1, C=2, H=1, W=2
    even = attention_map(feature_map, 2)
    odd = attention_map(feature_map, 3)
    torch.testing.assert_close(even, F.normalize(torch.tensor([[4.0, 5.0]], dtype=torch.float64)), rtol=FLOAT64, atol=0)
    torch.testing.assert_close(odd, F.normalize(torch.tensor([[-8.0, 14.0]], dtype=torch.float64)), rtol=FLOAT64,
                               atol=0)
    assert odd[0, 0] < 0


@pytest.mark.parametrize("p", [0, -1.0, float("inf"), float("nan"), "2", None])
def test_rejects_bad_p(p):
    spec = FeatureSpec((4,), (32,), 4)
    with pytest.raises(ConfigError, match="at: 'p' must be a finite positive number"):
        AT(spec, spec, num_samples=2, p=p)
