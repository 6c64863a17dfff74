"""The frozen teacher: eval mode and fixed statistics whatever its parent does, no gradients, a stable fingerprint."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossmodal.models import Encoder, FrozenTeacher


def make_teacher(**kwargs) -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(Encoder("test_resnet", **{"in_chans": 3, "num_classes": 4, **kwargs}))


class Pair(nn.Module):
    """A student beside a teacher, as a training module holds them."""

    def __init__(self, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.student = Encoder("test_resnet", in_chans=1, small_input=True)
        self.teacher = teacher


def test_parent_train_mode_leaves_the_teacher_in_eval_with_fixed_statistics():
    pair = Pair(make_teacher())
    pair.train()
    assert pair.student.training
    assert not any(module.training for module in pair.teacher.modules())
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    before = {name: b.clone() for name, b in pair.teacher.named_buffers()}
    pair.teacher(torch.randn(2, 3, 32, 32) * 3 + 1)
    for name, buffer in pair.teacher.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert pair.teacher.train(True) is pair.teacher and not pair.teacher.training


def test_gradients_flow_to_the_student_only():
    pair = Pair(make_teacher(num_classes=0)).train()
    rgb, depth = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32)
    teacher_out = pair.teacher(rgb)
    assert not teacher_out.embedding.requires_grad and not teacher_out.features[-1].requires_grad
    student_out = pair.student(depth)
    loss = (student_out.embedding[:, :96] - teacher_out.embedding).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert pair.student.model.conv1[0].weight.grad is not None


def test_outputs_and_spec_are_the_encoders_in_eval_mode():
    teacher = make_teacher(input_norm=([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]))
    x = torch.randn(2, 3, 32, 32)
    out = teacher(x)
    expected = teacher.encoder.eval()(x)
    assert teacher.spec is teacher.encoder.spec and out.logits.shape == (2, 4)
    assert torch.equal(out.embedding, expected.embedding)  # the encoder's own forward: the same bits
    for ours, theirs in zip(out.features, expected.features):
        assert torch.equal(ours, theirs)


def test_fingerprint_follows_weights_and_configuration():
    teacher = make_teacher()
    twin = make_teacher()
    assert teacher.fingerprint() == twin.fingerprint() and len(teacher.fingerprint()) == 64
    with torch.no_grad():
        twin.encoder.model.fc.bias[0] += 1e-3
    assert teacher.fingerprint() != twin.fingerprint()
    for changed in (dict(small_input=True), dict(input_norm=([0, 0, 0], [1, 1, 2]))):
        other = make_teacher(**changed)
        assert other.fingerprint() != teacher.fingerprint(), changed
    running = make_teacher()
    running.encoder.model.bn1.running_mean[0] = 5.0
    assert running.fingerprint() != teacher.fingerprint()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fingerprint_hashes_any_dtype(dtype):
    teacher = make_teacher()
    full = teacher.fingerprint()
    teacher.encoder.to(dtype)
    assert teacher.fingerprint() != full


def test_an_encoder_put_in_train_mode_directly_is_put_back_in_eval():
    teacher = make_teacher(drop_rate=0.5)
    x = torch.randn(2, 3, 32, 32) * 3 + 1
    expected = teacher(x)
    before = {name: b.clone() for name, b in teacher.named_buffers()}
    for bypass in (lambda: teacher.encoder.train(), lambda: teacher.encoder.model.layer1.train()):
        bypass()
        out = teacher(x)
        assert not any(module.training for module in teacher.modules())
        for name, buffer in teacher.named_buffers():
            assert torch.equal(buffer, before[name]), name
        torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(out.embedding, expected.embedding, rtol=0, atol=0)
