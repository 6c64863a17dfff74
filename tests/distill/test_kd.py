"""KD: the loss against explicit math (in float64: a check of the formula, ``tests/tolerance.py``), and its
construction errors."""
from __future__ import annotations

import math

import pytest
import torch

from crossmodal.distill.kd import KD, kd_loss
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64

SPEC = FeatureSpec((4,), (32,), 4, num_classes=3)


def output(logits: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(logits), 4, 1, 1)], torch.zeros(len(logits), 4), logits)


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_loss_matches_explicit_math_on_2x3_logits():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = softmax(s_row, temperature), softmax(t_row, temperature)
        expected += sum(qc * math.log(qc / pc) for pc, qc in zip(p, q))
    expected = expected * temperature ** 2 / 2
    kd = KD(SPEC, SPEC, num_samples=10, temperature=temperature)
    result = kd(output(torch.tensor(student, dtype=torch.float64)), output(torch.tensor(teacher, dtype=torch.float64)),
                torch.arange(2))
    assert result.loss.item() == pytest.approx(expected, rel=FLOAT64)
    assert result.logs["agreement"].item() == pytest.approx(0.0)  # argmax 1 vs 0, 2 vs 0


def test_loss_is_zero_for_equal_logits_and_positive_otherwise():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    kd = KD(SPEC, SPEC, num_samples=10)
    # q (log q - log p) with p = q: only rounding is left, relative to the terms' size (the entropy, about 1)
    assert kd(output(logits), output(logits.clone()), torch.arange(5)).loss.item() == pytest.approx(0.0, abs=FLOAT64)
    other = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    assert kd(output(logits), output(other), torch.arange(5)).loss.item() > 0


def test_default_temperature_is_four():
    generator = torch.Generator().manual_seed(0)
    logits_s, logits_t = torch.randn(3, 3, generator=generator), torch.randn(3, 3, generator=generator)
    loss = KD(SPEC, SPEC, num_samples=10)(output(logits_s), output(logits_t), torch.arange(3)).loss
    assert torch.equal(loss, kd_loss(logits_s, logits_t, 4.0))  # the same computation: the same bits


def test_gradcheck_float64():
    student = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 3.0), (student,))


@pytest.mark.parametrize("student_classes, teacher_classes", [(3, 5), (0, 3), (3, 0), (0, 0)])
def test_needs_matching_classifier_heads(student_classes, teacher_classes):
    student = FeatureSpec((4,), (32,), 4, student_classes)
    teacher = FeatureSpec((4,), (32,), 4, teacher_classes)
    with pytest.raises(ConfigError, match=rf"kd needs classifier heads with the same number of classes on "
                                          rf"student \({student_classes}\) and teacher \({teacher_classes}\)"):
        KD(student, teacher, num_samples=10)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), pytest.param(10 ** 400, id="10**400"),
                                         "4", None, [4.0]])
def test_rejects_bad_temperature(temperature):
    with pytest.raises(ConfigError, match="temperature"):
        KD(SPEC, SPEC, num_samples=10, temperature=temperature)


def test_needs_teacher_logits_only():
    needs = KD(SPEC, SPEC, num_samples=10).teacher_needs()
    assert needs.logits and not needs.embedding and not needs.stages


def test_numpy_and_integer_temperatures_are_accepted():
    np = pytest.importorskip("numpy")
    for temperature in (np.float32(2.0), np.int64(2), 2):
        assert KD(SPEC, SPEC, num_samples=10, temperature=temperature).temperature == 2.0
