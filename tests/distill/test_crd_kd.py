"""CRD+KD: its parts weighted as RepDistiller's run, and its own options checked as one-line ConfigErrors."""
from __future__ import annotations

import pytest
import torch

from crossmodal.distill import create_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import gamma

STUDENT = FeatureSpec((4, 12), (2, 4), 12, num_classes=5)
TEACHER = FeatureSpec((6, 10), (2, 4), 10, num_classes=5)


def build(**options):
    return create_distiller("crd+kd", STUDENT, TEACHER, num_samples=40, **options)


@pytest.mark.parametrize("name", ["crd_weight", "kd_weight"])
@pytest.mark.parametrize("weight", ["x", "0.8", None, -0.1, float("inf"), float("nan"), True, [1.0]])
def test_weights_must_be_finite_non_negative_numbers(name, weight):
    with pytest.raises(ConfigError, match=rf"^crd\+kd: '{name}' must be a finite number >= 0, got ") as info:
        build(**{name: weight})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["crd", "kd"])
@pytest.mark.parametrize("options", [[1, 2], "temperature=4", 4.0, {1: 2}])
def test_part_options_must_be_a_mapping_or_none(name, options):
    with pytest.raises(ConfigError, match=rf"^crd\+kd: '{name}' must be a mapping of {name} options or None") as info:
        build(**{name: options})
    assert "\n" not in str(info.value)


def test_valid_weights_and_options_build_both_parts():
    both = build(crd_weight=0, kd_weight=2, crd={"num_negatives": 8, "feat_dim": 8}, kd={"temperature": 2})
    assert (both.crd_weight, both.kd_weight) == (0.0, 2.0) and both.kd.temperature == 2.0
    assert isinstance(build(crd={"feat_dim": 8}).crd_weight, float)


def test_crd_plus_kd_weights_its_parts():
    spec_s = FeatureSpec((4, 12), (2, 4), 12, num_classes=5)
    spec_t = FeatureSpec((6, 10), (2, 4), 10, num_classes=5)
    torch.manual_seed(0)
    both = create_distiller("crd+kd", spec_s, spec_t, num_samples=40, crd={"num_negatives": 16, "feat_dim": 8})
    generator = torch.Generator().manual_seed(0)
    student = EncoderOutput([], torch.randn(6, 12, generator=generator), torch.randn(6, 5, generator=generator))
    teacher = EncoderOutput([], torch.randn(6, 10, generator=generator), torch.randn(6, 5, generator=generator))
    result = both(student, teacher, torch.arange(6))
    expected = 0.8 * float(result.logs["crd"]) + float(result.logs["kd"])
    # float32: 0.8 x crd, 1 x kd and their sum, three roundings of positive terms
    assert float(result.loss.detach()) == pytest.approx(expected, rel=gamma(3))
    assert both.teacher_needs().embedding and both.teacher_needs().logits
