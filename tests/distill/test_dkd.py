"""DKD: the loss against the paper's equations written with Python floats (float64, ``tests/tolerance.py``), the
warm-up schedule against the official trainer's 1-based one, the target class, options, gradients and state."""
from __future__ import annotations

import math
import re

import pytest
import torch

from crossmodal.distill.dkd import DKD
from crossmodal.distill.kd import kd_loss
from crossmodal.distill.registry import create_distiller, distiller_options
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64


def spec(classes: int) -> FeatureSpec:
    return FeatureSpec((4,), (32,), 4, num_classes=classes)


def output(logits: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(logits), 4, 1, 1)], torch.zeros(len(logits), 4), logits)


def make(classes: int = 4, labels=None, **options) -> DKD:
    return DKD(spec(classes), spec(classes), num_samples=10, labels=labels, **options)


def run(dkd: DKD, student, teacher, labels=None):
    student = torch.as_tensor(student, dtype=torch.float64)
    teacher = torch.as_tensor(teacher, dtype=torch.float64)
    labels = None if labels is None else torch.as_tensor(labels)
    return dkd(output(student), output(teacher), torch.arange(len(student)), labels)


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(q: list[float], p: list[float]) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)


def paper_parts(student, teacher, targets, temperature):
    """(TCKD, NCKD) per [0] eq. (1)-(5): b = (p_t, sum_{k != t} p_k), p^_i = p_i / sum_{k != t} p_k; each KL
    summed over the rows, times T^2, divided by B."""
    tckd = nckd = 0.0
    for s_row, t_row, t in zip(student, teacher, targets):
        p, q = softmax(s_row, temperature), softmax(t_row, temperature)
        p_rest = sum(v for i, v in enumerate(p) if i != t)
        q_rest = sum(v for i, v in enumerate(q) if i != t)
        tckd += kl([q[t], q_rest], [p[t], p_rest])
        nckd += kl([v / q_rest for i, v in enumerate(q) if i != t], [v / p_rest for i, v in enumerate(p) if i != t])
    scale = temperature ** 2 / len(student)
    return tckd * scale, nckd * scale


STUDENT = [[1.0, 2.0, 0.5, -0.3], [0.0, -1.0, 3.0, 0.7], [2.5, 0.2, -1.2, 1.1]]
TEACHER = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.5, 1.0, -2.0], [-0.5, 0.3, 2.2, 0.0]]
TEACHER_ARGMAX = [0, 1, 2]


def test_loss_matches_the_papers_equations_with_labels():
    labels = [1, 2, 0]
    dkd = make(labels=torch.tensor([0, 1, 2, 3]), alpha=0.7, beta=3.0, temperature=2.0, warmup=0)
    result = run(dkd, STUDENT, TEACHER, labels)
    tckd, nckd = paper_parts(STUDENT, TEACHER, labels, 2.0)
    assert result.logs["tckd"].item() == pytest.approx(tckd, rel=FLOAT64)
    assert result.logs["nckd"].item() == pytest.approx(nckd, rel=FLOAT64)
    assert result.loss.item() == pytest.approx(0.7 * tckd + 3.0 * nckd, rel=FLOAT64)
    assert result.logs["warmup"].item() == 1.0
    # student argmax 1, 2, 0 against the teacher's 0, 1, 2
    assert result.logs["agreement"].item() == 0.0


def test_defaults_and_their_first_epoch_factor():
    assert distiller_options("dkd") == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20,
                                        "target": "auto"}
    assert DKD.default_weight == 1.0
    dkd = make()
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup, dkd.target) == (1.0, 8.0, 4.0, 20, "auto")
    result = run(dkd, STUDENT, TEACHER)  # no set_epoch yet: the first epoch
    tckd, nckd = paper_parts(STUDENT, TEACHER, TEACHER_ARGMAX, 4.0)
    assert result.loss.item() == pytest.approx((tckd + 8.0 * nckd) / 20, rel=FLOAT64)


def test_warmup_factor_is_the_official_one_in_the_official_epoch():
    """mdistiller's trainer counts epochs from 1 and weighs with min(epoch / warmup, 1): its epoch e + 1 is ours e."""
    tckd, nckd = paper_parts(STUDENT, TEACHER, TEACHER_ARGMAX, 4.0)
    for warmup in (20, 1, 3):
        dkd = make(warmup=warmup)
        for epoch in range(25):
            dkd.set_epoch(epoch)
            official = min((epoch + 1) / warmup, 1.0)
            result = run(dkd, STUDENT, TEACHER)
            assert result.logs["warmup"].item() == official, (warmup, epoch)
            assert result.loss.item() == pytest.approx(official * (tckd + 8.0 * nckd), rel=FLOAT64)
    dkd = make(warmup=20)
    dkd.set_epoch(0)
    assert run(dkd, STUDENT, TEACHER).logs["warmup"].item() == 0.05
    dkd.set_epoch(19)
    assert run(dkd, STUDENT, TEACHER).logs["warmup"].item() == 1.0


def test_no_warmup_weighs_fully_from_the_start():
    dkd = make(warmup=0)
    for epoch in (0, 5):
        dkd.set_epoch(epoch)
        assert run(dkd, STUDENT, TEACHER).logs["warmup"].item() == 1.0


def test_kd_is_tckd_plus_one_minus_teacher_target_probability_times_nckd():
    """[0] eq. (5), against KD's own implementation, one sample at a time."""
    for s_row, t_row, target in zip(STUDENT, TEACHER, [3, 0, 2]):
        q_target = softmax(t_row, 3.0)[target]
        dkd = make(labels=torch.tensor([target]), beta=1.0 - q_target, temperature=3.0, warmup=0)
        loss = run(dkd, [s_row], [t_row], [target]).loss
        expected = kd_loss(torch.tensor([s_row], dtype=torch.float64), torch.tensor([t_row], dtype=torch.float64), 3.0)
        assert loss.item() == pytest.approx(expected.item(), rel=FLOAT64)


def test_two_classes_have_no_non_target_knowledge():
    student, teacher, labels = [[0.3, -1.0], [2.0, 0.5]], [[1.0, 0.0], [-0.5, 0.5]], [1, 0]
    result = run(make(2, labels=torch.tensor([0, 1]), temperature=2.0, warmup=0), student, teacher, labels)
    assert result.logs["nckd"].item() == 0.0
    tckd, _ = paper_parts(student, teacher, labels, 2.0)
    assert result.logs["tckd"].item() == pytest.approx(tckd, rel=FLOAT64)
    assert result.loss.item() == pytest.approx(tckd, rel=FLOAT64)
    # with two classes the binary distribution is the whole one: TCKD is KD
    expected = kd_loss(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64), 2.0)
    assert result.loss.item() == pytest.approx(expected.item(), rel=FLOAT64)


def test_confident_logits_stay_finite_and_exact():
    """A target probability of e^-125 (logit -500 at T = 4): float32 keeps it in log space, float64 matches the
    paper's equations (the official code, taking log of the summed probabilities, gives inf here in float32)."""
    student = [[-500.0, 0.0, 0.3], [0.2, -500.0, -0.1]]
    teacher = [[1.0, 0.0, -1.0], [0.5, 1.0, 0.0]]
    dkd = make(3, temperature=4.0, warmup=0)
    logits = torch.tensor(student, requires_grad=True)
    loss = dkd(output(logits), output(torch.tensor(teacher)), torch.arange(2), torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    tckd, nckd = paper_parts(student, teacher, [0, 1], 4.0)
    assert run(dkd, student, teacher, [0, 1]).loss.item() == pytest.approx(tckd + 8.0 * nckd, rel=FLOAT64)


@pytest.mark.parametrize("classes", [2, 5])
def test_gradcheck_float64(classes):
    generator = torch.Generator().manual_seed(classes)
    student = torch.randn(4, classes, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, classes, generator=generator, dtype=torch.float64)
    labels = torch.tensor([1, -1, 0, classes - 1])
    dkd = make(classes, labels=torch.arange(classes), alpha=0.5, beta=2.0, temperature=3.0, warmup=4)
    dkd.set_epoch(1)
    assert torch.autograd.gradcheck(lambda s: dkd(output(s), output(teacher), torch.arange(4), labels).loss,
                                    (student,))


def test_gradients_reach_the_student_only():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(5, 4, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 4, generator=generator, requires_grad=True)
    result = make()(output(student), output(teacher), torch.arange(5), torch.tensor([0, 1, -1, 3, 2]))
    result.loss.backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    for key, value in result.logs.items():
        assert value.dim() == 0 and not value.requires_grad, key
    assert set(result.logs) == {"tckd", "nckd", "warmup", "agreement"}


def test_target_selection():
    labels = [1, -1, 3]
    auto = run(make(labels=torch.tensor([0, 1, 2, 3]), warmup=0), STUDENT, TEACHER, labels)
    tckd, nckd = paper_parts(STUDENT, TEACHER, [1, TEACHER_ARGMAX[1], 3], 4.0)  # -1 falls back to the teacher's
    assert auto.loss.item() == pytest.approx(tckd + 8.0 * nckd, rel=FLOAT64)
    forced = run(make(labels=torch.tensor([0, 1, 2, 3]), warmup=0, target="labels"), STUDENT, TEACHER, labels)
    assert forced.loss.item() == auto.loss.item()

    tckd, nckd = paper_parts(STUDENT, TEACHER, TEACHER_ARGMAX, 4.0)
    teacher_only = run(make(labels=torch.tensor([0, 1, 2, 3]), warmup=0, target="teacher"), STUDENT, TEACHER,
                       labels)
    assert teacher_only.loss.item() == pytest.approx(tckd + 8.0 * nckd, rel=FLOAT64)
    unlabelled = run(make(warmup=0), STUDENT, TEACHER)  # no labels at all: the teacher's argmax
    assert unlabelled.loss.item() == pytest.approx(tckd + 8.0 * nckd, rel=FLOAT64)
    assert auto.loss.item() != pytest.approx(unlabelled.loss.item(), rel=1e-3)


def test_target_labels_needs_labels():
    with pytest.raises(ConfigError) as caught:
        make(target="labels")
    assert str(caught.value) == "dkd: 'target' is 'labels' but the run has no class labels (set loss.class_labels)"
    dkd = make(labels=torch.tensor([0, 1]), target="labels")
    with pytest.raises(ValueError, match="batch carries no class labels"):
        run(dkd, STUDENT, TEACHER)


@pytest.mark.parametrize("labels", [[0, 4], [-2, 1]])
def test_labels_outside_the_classes_are_refused(labels):
    with pytest.raises(ConfigError) as caught:
        make(labels=torch.tensor(labels))
    assert str(caught.value) == (f"dkd: class labels must lie in [-1, 4) for heads with 4 classes, got values in "
                                 f"[{min(labels)}, {max(labels)}]")


BAD_OPTIONS = [
    ("alpha", -1.0, "a finite number >= 0"), ("alpha", float("nan"), "a finite number >= 0"),
    ("alpha", float("inf"), "a finite number >= 0"), ("alpha", "1", "a finite number >= 0"),
    ("alpha", True, "a finite number >= 0"), ("beta", -0.5, "a finite number >= 0"),
    ("beta", None, "a finite number >= 0"), ("temperature", 0, "a finite positive number"),
    ("temperature", -4.0, "a finite positive number"), ("temperature", float("inf"), "a finite positive number"),
    ("warmup", -1, "an integer >= 0"), ("warmup", 2.5, "an integer >= 0"), ("warmup", 20.0, "an integer >= 0"),
    ("warmup", True, "an integer >= 0"), ("warmup", "20", "an integer >= 0"),
]


@pytest.mark.parametrize("name, value, what", BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_errors(name, value, what):
    with pytest.raises(ConfigError) as caught:
        make(**{name: value})
    assert str(caught.value) == f"dkd: '{name}' must be {what}, got {value!r}"


@pytest.mark.parametrize("target", ["label", "Teacher", None, 1])
def test_bad_target(target):
    with pytest.raises(ConfigError) as caught:
        make(target=target)
    assert str(caught.value) == f"dkd: 'target' must be one of 'auto', 'labels', 'teacher', got {target!r}"


def test_zero_weights_are_allowed():
    assert run(make(alpha=0.0, beta=0.0, warmup=0), STUDENT, TEACHER).loss.item() == 0.0


@pytest.mark.parametrize("student_classes, teacher_classes", [(3, 5), (0, 3), (0, 0)])
def test_needs_matching_classifier_heads(student_classes, teacher_classes):
    with pytest.raises(ConfigError) as caught:
        DKD(spec(student_classes), spec(teacher_classes), num_samples=10)
    assert str(caught.value) == (f"dkd needs classifier heads with the same number of classes on student "
                                 f"({student_classes}) and teacher ({teacher_classes})")


def test_needs_two_classes():
    with pytest.raises(ConfigError, match=re.escape("dkd needs classifier heads with at least 2 classes (a target "
                                                    "and a non-target class), got 1")):
        make(1)


def test_needs_teacher_logits_only():
    needs = make().teacher_needs()
    assert needs.logits and not needs.embedding and not needs.stages


def test_epoch_round_trips_through_the_state_dict():
    dkd = make()
    dkd.set_epoch(7)
    state = dkd.state_dict()
    assert set(state) == {"epoch"} and state["epoch"].item() == 7
    restored = create_distiller("dkd", spec(4), spec(4), num_samples=10)
    restored.load_state_dict(state)
    assert restored.epoch.item() == 7
    assert run(restored, STUDENT, TEACHER).loss.item() == run(dkd, STUDENT, TEACHER).loss.item()
    assert run(restored, STUDENT, TEACHER).logs["warmup"].item() == 8 / 20


@pytest.mark.parametrize("epoch", [-1, 1.0, True])
def test_set_epoch_refuses_a_non_epoch(epoch):
    with pytest.raises(ValueError, match="dkd: the epoch must be an integer >= 0"):
        make().set_epoch(epoch)


def test_low_precision_logits_are_computed_in_float32():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(3, 4, generator=generator).to(torch.bfloat16)
    teacher = torch.randn(3, 4, generator=generator).to(torch.float16)
    dkd = make()
    loss = dkd(output(student), output(teacher), torch.arange(3)).loss
    reference = dkd(output(student.float()), output(teacher.float()), torch.arange(3)).loss
    assert loss.dtype == torch.float32 and torch.equal(loss, reference)
