"""CC: RepDistiller's correlation formula with identity embeddings (in float64: a check of the formula,
``tests/tolerance.py``)."""
from __future__ import annotations

import pytest
import torch

from crossmodal.distill.cc import CC, cc_loss
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64

SPEC = FeatureSpec((3,), (32,), 3)


def output(embedding: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(embedding), 3, 1, 1)], embedding)


def identity_cc() -> CC:
    cc = CC(SPEC, SPEC, num_samples=3, feat_dim=3)
    with torch.no_grad():
        for linear in (cc.embed_student, cc.embed_teacher):
            linear.weight.copy_(torch.eye(3))
            linear.bias.zero_()
    return cc


def test_loss_with_identity_embeddings_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    delta = [[1.0, 1.0, 1.0], [1.0, 0.0, 2.0], [2.0, 0.0, 1.0]]  # |student - teacher|
    expected = ((1 * 1 + 1 * 0 + 1 * 2) + (1 * 2 + 0 * 0 + 2 * 1)) / 2
    assert [[abs(a - b) for a, b in zip(s, t)] for s, t in zip(student.tolist(), teacher.tolist())] == delta
    result = identity_cc().double()(output(student), output(teacher), torch.arange(3))
    assert result.loss.item() == pytest.approx(expected, rel=FLOAT64)


def test_both_embeddings_train_and_have_the_configured_size():
    student, teacher = FeatureSpec((3,), (32,), 10), FeatureSpec((3,), (32,), 20)
    cc = CC(student, teacher, num_samples=4)
    assert cc.embed_student.weight.shape == (128, 10) and cc.embed_teacher.weight.shape == (128, 20)
    cc(output(torch.randn(4, 10, requires_grad=True)), output(torch.randn(4, 20)), torch.arange(4)).loss.backward()
    assert cc.embed_teacher.weight.grad is not None and cc.embed_teacher.weight.grad.abs().sum() > 0
    assert cc.teacher_needs().embedding and not cc.teacher_needs().stages


def test_a_batch_of_one_gives_zero_in_the_graph():
    student = torch.randn(1, 3, requires_grad=True)
    loss = cc_loss(student, torch.randn(1, 3))
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None


@pytest.mark.parametrize("feat_dim", [0, -3, 2.5, True])
def test_rejects_bad_feat_dim(feat_dim):
    with pytest.raises(ConfigError, match="feat_dim"):
        CC(SPEC, SPEC, num_samples=3, feat_dim=feat_dim)
