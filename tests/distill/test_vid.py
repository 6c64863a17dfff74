"""VID: the Gaussian negative log-likelihood with a zero regressor, initial variance, and stage handling. Formulas
are checked in float64 (``tests/tolerance.py``)."""
from __future__ import annotations

import math

import pytest
import torch

from crossmodal.distill.vid import VID
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def output(features: list[torch.Tensor]) -> EncoderOutput:
    return EncoderOutput(features, torch.zeros(features[0].shape[0], 1))


def float64_vid(*args, **kwargs) -> VID:
    """A VID built in float64, its log-scale stored without float32's rounding, for the formula checks."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return VID(*args, **kwargs)
    finally:
        torch.set_default_dtype(default)


def zero_regressors(vid: VID) -> None:
    with torch.no_grad():
        for head in vid.heads:
            head.regressor[-1].weight.zero_()


def test_initial_variance_is_init_pred_var():
    spec = FeatureSpec((4, 8), (16, 32), 8)
    vid = float64_vid(spec, spec, num_samples=2, stages=[0, 1], init_pred_var=5.0)
    for head in vid.heads:  # softplus(log(e^(5 - eps) - 1)) + eps: a few roundings of values near 5
        torch.testing.assert_close(head.variance(), torch.full_like(head.variance(), 5.0), rtol=FLOAT64, atol=0)
    assert [head.log_scale.shape[0] for head in vid.heads] == [4, 8]


def test_loss_with_zero_regressor_output_by_hand():
    spec_s, spec_t = FeatureSpec((3,), (8,), 3), FeatureSpec((1,), (8,), 1)
    vid = float64_vid(spec_s, spec_t, num_samples=1)
    zero_regressors(vid)
    teacher_map = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    student_map = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = vid(output([student_map]), output([teacher_map]), torch.arange(1))
    expected = 0.5 * ((1 + 4 + 9 + 16) / 4 / 5.0 + math.log(5.0))
    assert result.loss.item() == pytest.approx(expected, rel=FLOAT64)
    assert result.logs["mean_variance"].item() == pytest.approx(5.0, rel=FLOAT64)


def test_default_stages_skip_the_shallowest_and_the_regressors_map_student_to_teacher_channels():
    student = FeatureSpec((4, 8, 16), (8, 16, 32), 16)
    teacher = FeatureSpec((3, 6, 12, 24), (4, 8, 16, 32), 24)
    vid = VID(student, teacher, num_samples=2)
    assert vid.pairs == [(1, 2), (2, 3)]
    convs = [[m for m in head.regressor if isinstance(m, torch.nn.Conv2d)] for head in vid.heads]
    assert [(c[0].in_channels, c[0].out_channels, c[2].out_channels) for c in convs] == [(8, 12, 12), (16, 24, 24)]


def test_stage_losses_are_summed_after_pooling_the_larger_map():
    spec_s, spec_t = FeatureSpec((2, 2), (16, 32), 2), FeatureSpec((1, 1), (16, 32), 1)
    vid = float64_vid(spec_s, spec_t, num_samples=1, stages=[0, 1])
    zero_regressors(vid)
    teacher_maps = [torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64),
                    torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=torch.float64)]
    generator = torch.Generator().manual_seed(0)
    student_maps = [torch.randn(1, 2, 8, 8, generator=generator, dtype=torch.float64),
                    torch.randn(1, 2, 1, 1, generator=generator, dtype=torch.float64)]  # the 2nd teacher map pools to 4
    result = vid(output(student_maps), output(teacher_maps), torch.arange(1))
    first = 0.5 * (4.0 / 5.0 + math.log(5.0))
    second = 0.5 * (16.0 / 5.0 + math.log(5.0))
    assert result.logs["stage_s0_t0"].item() == pytest.approx(first, rel=FLOAT64)
    assert result.logs["stage_s1_t1"].item() == pytest.approx(second, rel=FLOAT64)
    assert result.loss.item() == pytest.approx(first + second, rel=FLOAT64)


def test_matches_the_reference_formula_with_a_trained_variance():
    torch.manual_seed(0)
    spec_s, spec_t = FeatureSpec((3,), (8,), 3), FeatureSpec((4,), (8,), 4)
    vid = float64_vid(spec_s, spec_t, num_samples=2)
    with torch.no_grad():
        vid.heads[0].log_scale.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 3, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64)
    mean = vid.heads[0].regressor(student)
    variance = (torch.log(1.0 + torch.exp(vid.heads[0].log_scale)) + 1e-5).view(1, -1, 1, 1)
    expected = torch.mean(0.5 * ((mean - teacher) ** 2 / variance + torch.log(variance)))
    loss = vid(output([student]), output([teacher]), torch.arange(2)).loss
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=FLOAT64)


@pytest.mark.parametrize("options", [{"init_pred_var": 0.0}, {"eps": -1.0}, {"init_pred_var": 1e-6},
                                     {"init_pred_var": float("inf")}, {"init_pred_var": float("nan")},
                                     {"eps": float("inf")}, {"eps": float("nan")}, {"init_pred_var": "5"},
                                     {"eps": "1e-5"}, {"init_pred_var": None}])
def test_rejects_bad_variance_options(options):
    spec = FeatureSpec((3,), (8,), 3)
    with pytest.raises(ConfigError, match="vid: '(init_pred_var|eps)'") as info:
        VID(spec, spec, num_samples=2, **options)
    assert "\n" not in str(info.value)
