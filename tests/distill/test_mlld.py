"""MLLD: the three alignment levels against the paper's equations written out with Python floats (float64 on our
side: a check of the formula, ``tests/tolerance.py``), gradients, options and construction errors."""
from __future__ import annotations

import math

import pytest
import torch

from crossmodal.distill.mlld import MLLD, mlld_levels
from crossmodal.distill.registry import create_distiller, distiller_options
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64

SPEC = FeatureSpec((4,), (32,), 4, num_classes=4)
STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.5, 0.3, -0.7, 1.1]]
TEACHER = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, 1.0, -2.0], [-0.5, 2.0, 0.1, 0.9]]


def output(logits: torch.Tensor) -> EncoderOutput:
    return EncoderOutput([torch.zeros(len(logits), 4, 1, 1)], torch.zeros(len(logits), 4), logits)


def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def paper_levels(student: list[list[float]], teacher: list[list[float]],
                 temperatures: list[float]) -> tuple[float, float, float]:
    """[0]'s instance, batch and class levels, summed over the temperatures, from the equations: KL summed over
    classes and averaged over the batch; (1/B) ||G^t - G^s||^2 with G = P P^T; (1/C) ||M^t - M^s||^2 with
    M = P^T P."""
    batch, classes = len(student), len(student[0])
    instance = batch_level = class_level = 0.0
    for temperature in temperatures:
        ps = [softmax(row, temperature) for row in student]
        pt = [softmax(row, temperature) for row in teacher]
        for i in range(batch):
            instance += sum(q * math.log(q / p) for p, q in zip(ps[i], pt[i])) / batch
        for a in range(batch):
            for b in range(batch):
                gt = sum(pt[a][j] * pt[b][j] for j in range(classes))
                gs = sum(ps[a][j] * ps[b][j] for j in range(classes))
                batch_level += (gt - gs) ** 2 / batch
        for c in range(classes):
            for d in range(classes):
                mt = sum(pt[i][c] * pt[i][d] for i in range(batch))
                ms = sum(ps[i][c] * ps[i][d] for i in range(batch))
                class_level += (mt - ms) ** 2 / classes
    return instance, batch_level, class_level


def run(mlld: MLLD, student=STUDENT, teacher=TEACHER, labels=None):
    s = torch.tensor(student, dtype=torch.float64)
    t = torch.tensor(teacher, dtype=torch.float64)
    return mlld(output(s), output(t), torch.arange(len(student)), labels)


def test_levels_match_the_paper_equations_on_3x4_logits():
    temperatures = [1.0, 2.5]
    instance, batch, class_ = paper_levels(STUDENT, TEACHER, temperatures)
    mlld = MLLD(SPEC, SPEC, num_samples=10, temperatures=temperatures, instance_weight=0.5, batch_weight=2.0,
                class_weight=3.0)
    result = run(mlld)
    assert result.logs["instance"].item() == pytest.approx(instance, rel=FLOAT64)
    assert result.logs["batch"].item() == pytest.approx(batch, rel=FLOAT64)
    assert result.logs["class"].item() == pytest.approx(class_, rel=FLOAT64)
    assert result.loss.item() == pytest.approx(0.5 * instance + 2.0 * batch + 3.0 * class_, rel=FLOAT64)
    # argmax 1 vs 0, 2 vs 0 (ties go to the first), 0 vs 1
    assert result.logs["agreement"].item() == 0.0


def test_default_loss_uses_the_paper_temperatures_and_unit_weights():
    instance, batch, class_ = paper_levels(STUDENT, TEACHER, [2.0, 3.0, 4.0, 5.0, 6.0])
    result = run(MLLD(SPEC, SPEC, num_samples=10))
    assert result.loss.item() == pytest.approx(instance + batch + class_, rel=FLOAT64)


def test_each_weight_selects_its_level():
    full = run(MLLD(SPEC, SPEC, num_samples=10)).logs
    for name, level in [("instance_weight", "instance"), ("batch_weight", "batch"), ("class_weight", "class")]:
        weights = {"instance_weight": 0.0, "batch_weight": 0.0, "class_weight": 0.0, name: 1.0}
        result = run(MLLD(SPEC, SPEC, num_samples=10, **weights))
        assert torch.equal(result.loss, full[level])
        assert all(torch.equal(result.logs[key], full[key]) for key in ("instance", "batch", "class"))


def test_stacked_temperatures_equal_the_sum_of_single_temperatures():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    together = mlld_levels(student, teacher, [1.5, 4.0, 7.0])
    apart = [mlld_levels(student, teacher, [t]) for t in (1.5, 4.0, 7.0)]
    for level, value in enumerate(together):
        assert value.item() == pytest.approx(sum(parts[level].item() for parts in apart), rel=FLOAT64)


def test_loss_is_zero_for_equal_logits_and_positive_otherwise():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    mlld = MLLD(SPEC, SPEC, num_samples=10)
    same = mlld(output(logits), output(logits.clone()), torch.arange(5))
    # q (log q - log p) with p = q, and G - G: only rounding is left, relative to terms of order one
    assert same.loss.item() == pytest.approx(0.0, abs=FLOAT64)
    assert same.logs["batch"].item() == 0.0 and same.logs["class"].item() == 0.0
    assert same.logs["agreement"].item() == 1.0
    other = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    result = mlld(output(logits), output(other), torch.arange(5))
    assert all(result.logs[key].item() > 0 for key in ("instance", "batch", "class"))


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    mlld = MLLD(SPEC, SPEC, num_samples=10, temperatures=[1.0, 3.0], instance_weight=0.7, class_weight=2.0)
    assert torch.autograd.gradcheck(lambda s: mlld(output(s), output(teacher), torch.arange(4)).loss, (student,))


def test_gradients_reach_the_student_only():
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(4, 4, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 4, generator=generator, requires_grad=True)
    result = MLLD(SPEC, SPEC, num_samples=10)(output(student), output(teacher), torch.arange(4))
    result.loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(not value.requires_grad for value in result.logs.values())


def test_bfloat16_autocast_computes_in_float32():
    """Autocast would run the Gram matrices' products in bfloat16; the loss is the float32 one, bit for bit."""
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    mlld = MLLD(SPEC, SPEC, num_samples=10)
    plain = mlld(output(student), output(teacher), torch.arange(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = mlld(output(student), output(teacher), torch.arange(8))
    assert autocast.loss.dtype == torch.float32
    for key in ("instance", "batch", "class"):
        assert torch.equal(autocast.logs[key], plain.logs[key])
    half = mlld(output(student.half()), output(teacher.half()), torch.arange(8))
    assert half.loss.dtype == torch.float32


def test_labels_are_ignored_and_one_sample_works():
    with_labels = run(MLLD(SPEC, SPEC, num_samples=10, labels=torch.tensor([0, -1, 2])),
                      labels=torch.tensor([0, -1, 2]))
    assert torch.equal(with_labels.loss, run(MLLD(SPEC, SPEC, num_samples=10)).loss)
    single = run(MLLD(SPEC, SPEC, num_samples=10), STUDENT[:1], TEACHER[:1])
    assert single.loss.item() == pytest.approx(sum(paper_levels(STUDENT[:1], TEACHER[:1], [2, 3, 4, 5, 6])),
                                               rel=FLOAT64)


def test_defaults():
    mlld = MLLD(SPEC, SPEC, num_samples=10)
    assert mlld.temperatures == (2.0, 3.0, 4.0, 5.0, 6.0)
    assert (mlld.instance_weight, mlld.batch_weight, mlld.class_weight) == (1.0, 1.0, 1.0)
    assert MLLD.default_weight == 1.0
    assert distiller_options("mlld") == {"temperatures": (2.0, 3.0, 4.0, 5.0, 6.0), "instance_weight": 1.0,
                                         "batch_weight": 1.0, "class_weight": 1.0}


def test_registered_and_built_from_a_config_list():
    mlld = create_distiller("mlld", SPEC, SPEC, num_samples=10, temperatures=[1, 2.5, 6])
    assert isinstance(mlld, MLLD) and mlld.temperatures == (1.0, 2.5, 6.0)


@pytest.mark.parametrize("temperatures", [[], (), "2", 4.0, None, {2.0, 3.0}, {"a": 2.0}, [0], [2.0, -1.0],
                                          [float("nan")], [float("inf")], ["2"], [True], [None],
                                          pytest.param([10 ** 400], id="10**400")])
def test_rejects_bad_temperatures(temperatures):
    with pytest.raises(ConfigError) as caught:
        MLLD(SPEC, SPEC, num_samples=10, temperatures=temperatures)
    assert str(caught.value) == (f"mlld: 'temperatures' must be a non-empty list of finite positive numbers, "
                                 f"got {temperatures!r}")


@pytest.mark.parametrize("name", ["instance_weight", "batch_weight", "class_weight"])
@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf"), "1", None, True, [1.0]])
def test_rejects_bad_weights(name, value):
    with pytest.raises(ConfigError) as caught:
        MLLD(SPEC, SPEC, num_samples=10, **{name: value})
    assert str(caught.value) == f"mlld: '{name}' must be a finite number >= 0, got {value!r}"


def test_rejects_all_weights_zero():
    with pytest.raises(ConfigError) as caught:
        MLLD(SPEC, SPEC, num_samples=10, instance_weight=0, batch_weight=0.0, class_weight=0)
    assert str(caught.value) == ("mlld: at least one of 'instance_weight', 'batch_weight', 'class_weight' must be "
                                 "positive, got 0.0, 0.0, 0.0")


def test_accepts_numpy_numbers_and_tuples():
    np = pytest.importorskip("numpy")
    mlld = MLLD(SPEC, SPEC, num_samples=10, temperatures=(np.float32(2.0), np.int64(3)), batch_weight=np.float64(0))
    assert mlld.temperatures == (2.0, 3.0) and mlld.batch_weight == 0.0


@pytest.mark.parametrize("student_classes, teacher_classes", [(3, 5), (0, 3), (3, 0), (0, 0)])
def test_needs_matching_classifier_heads(student_classes, teacher_classes):
    student = FeatureSpec((4,), (32,), 4, student_classes)
    teacher = FeatureSpec((4,), (32,), 4, teacher_classes)
    with pytest.raises(ConfigError, match=rf"^mlld needs classifier heads with the same number of classes on "
                                          rf"student \({student_classes}\) and teacher \({teacher_classes}\)$"):
        MLLD(student, teacher, num_samples=10)


def test_needs_teacher_logits_only():
    needs = MLLD(SPEC, SPEC, num_samples=10).teacher_needs()
    assert needs.logits and not needs.embedding and not needs.stages


def test_state_dict_round_trip():
    """MLLD keeps no state: an empty state dict, and loading one leaves the loss unchanged."""
    mlld = MLLD(SPEC, SPEC, num_samples=10, temperatures=[1.0, 2.0])
    assert mlld.state_dict() == {}
    other = MLLD(SPEC, SPEC, num_samples=10, temperatures=[1.0, 2.0])
    other.load_state_dict(mlld.state_dict())
    assert torch.equal(run(other).loss, run(mlld).loss)


def test_missing_logits_are_refused():
    mlld = MLLD(SPEC, SPEC, num_samples=10)
    plain = EncoderOutput([torch.zeros(2, 4, 1, 1)], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mlld: both student and teacher outputs must carry logits"):
        mlld(plain, output(torch.zeros(2, 4)), torch.arange(2))
