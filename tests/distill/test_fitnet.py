"""FitNet: the hint loss with a known regressor, stage choice, and spatial adaptation. Formulas are checked in
float64 (``tests/tolerance.py``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill.fitnet import FitNet
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(features: list[torch.Tensor]) -> EncoderOutput:
    return EncoderOutput(features, torch.zeros(features[0].shape[0], 1))


def identity_regressor(fitnet: FitNet) -> None:
    """Make the regressor relu(x): identity 1x1 conv, no bias, BN in eval mode with neutral statistics."""
    with torch.no_grad():
        conv = fitnet.regressor.conv
        conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels).view_as(conv.weight))
        conv.bias.zero_()
        bn = fitnet.regressor.bn
        bn.running_var.fill_(1.0 - bn.eps)  # so that BN divides by exactly 1
    fitnet.eval()


def test_hint_loss_with_identity_regressor_and_pooled_student():
    spec = FeatureSpec((2,), (8,), 2)
    fitnet = FitNet(spec, spec, num_samples=4, stage=0).double()
    identity_regressor(fitnet)
    student_map = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    student_map[:, 1] *= -1  # the ReLU zeroes the second channel after pooling
    teacher_map = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    # 2x2 block means of 0..15 laid out 4x4: 2.5, 4.5, 10.5, 12.5
    predicted = [[2.5, 4.5, 10.5, 12.5], [0.0, 0.0, 0.0, 0.0]]
    expected = sum((p - t) ** 2 for row, target in zip(predicted, teacher_map.flatten(2)[0].tolist())
                   for p, t in zip(row, target)) / 8
    loss = fitnet(output([student_map]), output([teacher_map]), torch.arange(1)).loss
    assert loss.item() == pytest.approx(expected, rel=FLOAT64)


def test_default_stage_is_the_third_aligned_stage():
    student = FeatureSpec((8, 16, 32, 64), (4, 8, 16, 32), 64)
    teacher = FeatureSpec((4, 8, 16, 24, 64), (2, 4, 8, 16, 32), 64)
    fitnet = FitNet(student, teacher, num_samples=4)
    assert fitnet.pairs == [(2, 3)]
    assert fitnet.teacher_needs().stages == frozenset({3})
    assert (fitnet.regressor.conv.in_channels, fitnet.regressor.conv.out_channels) == (32, 24)
    assert FitNet(student, teacher, num_samples=4, stage=-1).pairs == [(3, 4)]


@pytest.mark.parametrize("student_stages, teacher_stages, expected", [
    (2, 2, [(1, 1)]), (1, 3, [(0, 2)]), (2, 5, [(1, 4)]), (3, 3, [(2, 2)]), (5, 3, [(4, 2)])])
def test_default_stage_falls_back_to_the_deepest_when_fewer_than_three_stages_pair(student_stages, teacher_stages,
                                                                                     expected):
    student = FeatureSpec(tuple(range(4, 4 + student_stages)), tuple(2 ** i for i in range(1, student_stages + 1)), 8)
    teacher = FeatureSpec(tuple(range(8, 8 + teacher_stages)), tuple(2 ** i for i in range(1, teacher_stages + 1)), 8)
    fitnet = FitNet(student, teacher, num_samples=4)
    assert fitnet.pairs == expected
    (s, t), = expected
    assert (fitnet.regressor.conv.in_channels, fitnet.regressor.conv.out_channels) == (student.channels[s],
                                                                                        teacher.channels[t])


@pytest.mark.parametrize("stage", [2, -3, 1.0, True, [0]])
def test_an_explicit_stage_out_of_range_is_a_config_error(stage):
    spec = FeatureSpec((8, 16), (16, 32), 16)
    with pytest.raises(ConfigError, match=r"fitnet: stage .* is out of range; the paired encoders have 2 stages"):
        FitNet(spec, spec, num_samples=4, stage=stage)


def test_student_smaller_teacher_and_mixed_sizes_are_pooled():
    student = FeatureSpec((3,), (8,), 3)
    teacher = FeatureSpec((5,), (8,), 5)
    fitnet = FitNet(student, teacher, num_samples=4, stage=0)
    fitnet.eval()
    generator = torch.Generator().manual_seed(0)
    student_map, teacher_map = torch.randn(2, 3, 6, 2, generator=generator), torch.randn(2, 5, 3, 4, generator=generator)
    loss = fitnet(output([student_map]), output([teacher_map]), torch.arange(2)).loss
    expected = F.mse_loss(fitnet.regressor(F.adaptive_avg_pool2d(student_map, (3, 2))),
                          F.adaptive_avg_pool2d(teacher_map, (3, 2)))
    assert torch.equal(loss, expected)  # the same operations on the same tensors: the same bits


def test_loss_decreases_when_training_the_regressor():
    spec_s, spec_t = FeatureSpec((4,), (8,), 4), FeatureSpec((6,), (8,), 6)
    torch.manual_seed(0)
    fitnet = FitNet(spec_s, spec_t, num_samples=8, stage=0)
    student_map = torch.randn(8, 4, 4, 4)
    mixing = torch.randn(6, 4)
    teacher_map = torch.relu(mixing @ student_map.flatten(2)).view(8, 6, 4, 4)  # reachable by a 1x1 conv + ReLU
    optimizer = torch.optim.Adam(fitnet.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = fitnet(output([student_map]), output([teacher_map]), torch.arange(8)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
