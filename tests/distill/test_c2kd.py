"""C2KD: the loss against the paper's equations written out with Python floats (in float64: a check of the formula,
``tests/tolerance.py``), Kendall's tau-b against its definition (both code paths, ties included), gradients against
the numerical gradient of the loss with its targets held fixed, the proxies, target classes, options and state."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crossmodal.distill.c2kd as c2kd_module
from crossmodal.distill.c2kd import C2KD, ProxyHead, kendall_tau_b
from crossmodal.distill.registry import distiller_options, get_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import FLOAT64

SPEC = FeatureSpec((3, 4), (2, 4), 4, num_classes=4)


class Fixed(nn.Module):
    """A stand-in proxy that returns given logits whatever it reads."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, stage_map: torch.Tensor) -> torch.Tensor:
        return self.logits


def output(logits: torch.Tensor, spec: FeatureSpec = SPEC, maps=None) -> EncoderOutput:
    batch = len(logits)
    maps = maps if maps is not None else [torch.zeros(batch, c, 2, 2, dtype=logits.dtype) for c in spec.channels]
    return EncoderOutput(maps, torch.zeros(batch, spec.embed_dim, dtype=logits.dtype), logits)


# ---- references written from the paper's definitions, in Python floats -----------------------------------------
def softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))


def sign(v: float) -> int:
    return (v > 0) - (v < 0)


def tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties in x)(n0 - ties in y)); nan when undefined."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    score = sum(sign(x[i] - x[j]) * sign(y[i] - y[j]) for i, j in pairs)
    ties_x = sum(x[i] == x[j] for i, j in pairs)
    ties_y = sum(y[i] == y[j] for i, j in pairs)
    denominator = math.sqrt((len(pairs) - ties_x) * (len(pairs) - ties_y))
    return score / denominator if denominator else math.nan


STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 1.0], [0.3, 0.2, 0.1, 0.0], [0.0, 1.0, 1.0, 2.5]]
TEACHER = [[2.0, 0.0, 1.0, 0.5], [1.0, 1.5, 1.0, -1.0], [-1.0, 0.5, 2.0, 0.0], [0.0, 0.2, 0.4, 3.0]]
STUDENT_PROXY = [[0.5, 1.5, -0.5, 0.0], [1.0, 0.0, 2.0, 1.0], [0.1, 0.4, 0.2, 0.3], [1.0, 2.0, 0.0, -1.0]]
TEACHER_PROXY = [[1.0, 2.0, 0.0, -1.0], [0.5, 0.2, 1.5, 0.8], [0.4, 0.1, 0.3, 0.2], [-1.0, 0.0, 1.0, 2.0]]


def expected_parts(targets: list[int], temperature: float, threshold: float) -> dict[str, float]:
    batch, scale = len(STUDENT), temperature ** 2 / len(STUDENT)
    proxy_student = proxy_teacher = ofsd = 0.0
    selected, taus = [], []
    for z_s, z_t, s, t, y in zip(STUDENT, TEACHER, STUDENT_PROXY, TEACHER_PROXY, targets):
        p_s, p_sp = softmax(z_s, temperature), softmax(s, temperature)
        proxy_student += kl(p_s, p_sp) + kl(p_sp, p_s)
        proxy_teacher += kl(softmax(z_t, temperature), softmax(t, temperature))
        tau = tau_b(t, s)
        taus.append(tau)
        selected.append(tau > threshold)
        rest = [c for c in range(len(s)) if c != y]
        q_s, q_t = softmax([s[c] for c in rest], temperature), softmax([t[c] for c in rest], temperature)
        ofsd += (tau > threshold) * (kl(q_t, q_s) + kl(q_s, q_t))
    return {"proxy_student": proxy_student * scale, "proxy_teacher": proxy_teacher * scale, "ofsd": ofsd * scale,
            "selected": sum(selected) / batch, "krc": sum(taus) / batch}


def stubbed(**options) -> tuple[C2KD, torch.Tensor, torch.Tensor]:
    c2kd = C2KD(SPEC, SPEC, num_samples=10, **options).double()
    student_proxy = torch.tensor(STUDENT_PROXY, dtype=torch.float64, requires_grad=True)
    teacher_proxy = torch.tensor(TEACHER_PROXY, dtype=torch.float64, requires_grad=True)
    c2kd.student_proxy, c2kd.teacher_proxy = Fixed(student_proxy), Fixed(teacher_proxy)
    return c2kd, student_proxy, teacher_proxy


@pytest.mark.parametrize("temperature, threshold", [(1.0, 0.0), (2.0, -0.3)])
def test_loss_matches_the_equations_on_4x4_logits(temperature, threshold):
    labels = torch.tensor([1, -1, 3, 0])  # the second row falls back to the teacher's argmax, class 1
    expected = expected_parts([1, 1, 3, 0], temperature, threshold)
    assert 0 < expected["selected"] < 1  # some rows in, some out: the selection matters
    proxy_weight, ofsd_weight = 0.7, 1.3
    c2kd, _, _ = stubbed(temperature=temperature, krc_threshold=threshold, proxy_weight=proxy_weight,
                         ofsd_weight=ofsd_weight)
    result = c2kd(output(torch.tensor(STUDENT, dtype=torch.float64)),
                  output(torch.tensor(TEACHER, dtype=torch.float64)), torch.arange(4), labels)
    for key, value in expected.items():
        assert result.logs[key].item() == pytest.approx(value, rel=FLOAT64, abs=FLOAT64), key
    total = (proxy_weight * (expected["proxy_student"] + expected["proxy_teacher"])
             + ofsd_weight * expected["ofsd"])
    assert result.loss.item() == pytest.approx(total, rel=FLOAT64)
    assert result.logs["agreement"].item() == 0.25  # student | teacher argmax: 1 | 0, 2 | 1, 0 | 2, 3 | 3
    assert set(result.logs) == {"proxy_student", "proxy_teacher", "ofsd", "selected", "krc", "agreement"}
    assert all(not value.requires_grad for value in result.logs.values())


def test_selection_is_strict_and_both_kendall_paths_give_the_same_loss(monkeypatch):
    # a threshold equal to a row's tau leaves that row out (m_i = 1 only where tau > threshold)
    taus = [tau_b(t, s) for t, s in zip(TEACHER_PROXY, STUDENT_PROXY)]
    c2kd, _, _ = stubbed(krc_threshold=taus[0])
    args = (output(torch.tensor(STUDENT, dtype=torch.float64)), output(torch.tensor(TEACHER, dtype=torch.float64)),
            torch.arange(4))
    direct = c2kd(*args)
    assert direct.logs["selected"].item() == sum(tau > taus[0] for tau in taus) / 4
    monkeypatch.setattr(c2kd_module, "DIRECT_KENDALL_ELEMENTS", 0)  # the merge-sort path
    merged = c2kd(*args)
    assert merged.loss.item() == pytest.approx(direct.loss.item(), rel=FLOAT64)
    assert merged.logs["krc"].item() == pytest.approx(direct.logs["krc"].item(), rel=FLOAT64)


@pytest.mark.parametrize("classes", [2, 3, 7, 33, 100])
@pytest.mark.parametrize("path", ["direct", "merge-2", "merge-32", "merge-256"])
def test_kendall_tau_b_matches_its_definition_with_ties(classes, path, monkeypatch):
    """Every pair at once, or the merge-sort count from first blocks of 2, 32 (a CPU's) or 256 (an accelerator's)
    values: most levels merged, some, or none up to 100 classes."""
    monkeypatch.setattr(c2kd_module, "DIRECT_KENDALL_ELEMENTS", 1 << 40 if path == "direct" else 0)
    if path != "direct":
        monkeypatch.setattr(c2kd_module, "MERGE_BASE_CPU", int(path.split("-")[1]))
    generator = torch.Generator().manual_seed(classes)
    x = torch.randn(6, classes, generator=generator, dtype=torch.float64)
    y = torch.randn(6, classes, generator=generator, dtype=torch.float64)
    x[1], y[2] = (x[1] * 2).round(), (y[2] * 2).round()  # ties in x, in y
    x[3], y[3] = x[3].round(), y[3].round()  # ties in both, some pairs tied in both at once
    x[4] = 0.5  # constant: no tau
    tau, valid = kendall_tau_b(x, y)
    assert tau.dtype == torch.float64 and valid.dtype == torch.bool
    for row in range(6):
        expected = tau_b(x[row].tolist(), y[row].tolist())
        assert valid[row].item() == (not math.isnan(expected))
        assert tau[row].item() == pytest.approx(0.0 if math.isnan(expected) else expected, rel=FLOAT64,
                                                abs=FLOAT64)


def test_kendall_tau_b_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 300, generator=generator), torch.randn(4, 300, generator=generator)
    x[0] = x[0].round()
    tau, _ = kendall_tau_b(x, y)  # 4 x 300^2 > 2^18: the merge-sort path
    for row in range(4):
        assert tau[row].item() == pytest.approx(stats.kendalltau(x[row].numpy(), y[row].numpy())[0], rel=FLOAT64)


def test_gradients_are_those_of_the_loss_with_its_targets_held_fixed():
    """The official loss detaches every target distribution (and the selection is piecewise constant), so its
    gradient is that of the same equations with the targets held at their values: checked numerically
    (gradcheck, float64) on the student's logits, its stage map and every proxy parameter."""
    torch.manual_seed(0)
    student_spec = FeatureSpec((3, 4), (2, 4), 4, 5)
    teacher_spec = FeatureSpec((2, 2, 3), (1, 2, 4), 3, 5)  # deeper: proxy_stage -2 is its stage 1
    temperature, threshold, proxy_weight, ofsd_weight, batch = 2.0, -0.2, 0.7, 1.3, 6
    c2kd = C2KD(student_spec, teacher_spec, num_samples=10, temperature=temperature, krc_threshold=threshold,
                proxy_weight=proxy_weight, ofsd_weight=ofsd_weight, proxy_hidden=3).double()
    assert (c2kd.student_stage, c2kd.teacher_stage) == (0, 1)
    student_logits = torch.randn(batch, 5, dtype=torch.float64, requires_grad=True)
    student_map = torch.randn(batch, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(batch, 5, dtype=torch.float64)
    teacher_map = torch.randn(batch, 2, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 4, -1, 2, -1, 1])
    student = EncoderOutput([student_map, torch.zeros(batch, 4, 1, 1, dtype=torch.float64)],
                            torch.zeros(batch, 4, dtype=torch.float64), student_logits)
    teacher = EncoderOutput([torch.zeros(batch, 2, 4, 4, dtype=torch.float64), teacher_map,
                             torch.zeros(batch, 3, 1, 1, dtype=torch.float64)],
                            torch.zeros(batch, 3, dtype=torch.float64), teacher_logits)
    result = c2kd(student, teacher, torch.arange(batch), labels)
    result.loss.backward()
    names = [f"student_proxy.{n}" for n, _ in c2kd.student_proxy.named_parameters()] + \
            [f"teacher_proxy.{n}" for n, _ in c2kd.teacher_proxy.named_parameters()]
    params = dict(c2kd.named_parameters())
    ours = [student_logits.grad, student_map.grad] + [params[n].grad for n in names]

    # the targets and the selection, held at their values at this point
    with torch.no_grad():
        s0, t0 = c2kd.student_proxy(student_map), c2kd.teacher_proxy(teacher_map)
    targets = [int(label) if label >= 0 else int(teacher_logits[i].argmax()) for i, label in enumerate(labels)]
    rest = torch.tensor([[c for c in range(5) if c != y] for y in targets])
    selected = torch.tensor([tau_b(t.tolist(), s.tolist()) > threshold for t, s in zip(t0, s0)],
                            dtype=torch.float64)
    assert 0 < selected.sum() < batch

    def log_p(z):
        return F.log_softmax(z / temperature, dim=1)

    def log_q(z):  # over the non-target classes
        return F.log_softmax(z.gather(1, rest) / temperature, dim=1)

    fixed = {"zs": log_p(student_logits.detach()), "s": log_p(s0), "zt": log_p(teacher_logits), "t": log_p(t0),
             "qs": log_q(s0), "qt": log_q(t0)}

    def kl_rows(log_target, log_prediction):
        return (log_target.exp() * (log_target - log_prediction)).sum(1)

    def surrogate(z_s, stage_map, *values):
        state = dict(zip(names, values))
        s = torch.func.functional_call(c2kd.student_proxy, {n.split(".", 1)[1]: v for n, v in state.items()
                                                            if n.startswith("student_proxy.")}, (stage_map,))
        t = torch.func.functional_call(c2kd.teacher_proxy, {n.split(".", 1)[1]: v for n, v in state.items()
                                                            if n.startswith("teacher_proxy.")}, (teacher_map,))
        scale = temperature ** 2 / batch
        l_s = (kl_rows(fixed["zs"], log_p(s)) + kl_rows(fixed["s"], log_p(z_s))).sum() * scale
        l_t = kl_rows(fixed["zt"], log_p(t)).sum() * scale
        l_ofsd = (selected * (kl_rows(fixed["qt"], log_q(s)) + kl_rows(fixed["qs"], log_q(t)))).sum() * scale
        return proxy_weight * (l_s + l_t) + ofsd_weight * l_ofsd

    inputs = [student_logits.detach().clone().requires_grad_(), student_map.detach().clone().requires_grad_()]
    inputs += [params[n].detach().clone().requires_grad_() for n in names]
    value = surrogate(*inputs)
    assert value.item() == pytest.approx(result.loss.item(), rel=FLOAT64)
    assert torch.autograd.gradcheck(surrogate, tuple(inputs))  # its analytical gradient is the numerical one
    for mine, theirs in zip(ours, torch.autograd.grad(value, inputs)):
        torch.testing.assert_close(mine, theirs, rtol=FLOAT64, atol=FLOAT64)


def test_gradients_reach_the_student_and_the_proxies_never_the_teacher():
    torch.manual_seed(0)
    c2kd = C2KD(SPEC, SPEC, num_samples=10)
    student = output(torch.randn(5, 4, requires_grad=True),
                     maps=[torch.randn(5, c, 2, 2, requires_grad=True) for c in SPEC.channels])
    teacher = output(torch.randn(5, 4, requires_grad=True),
                     maps=[torch.randn(5, c, 2, 2, requires_grad=True) for c in SPEC.channels])
    c2kd(student, teacher, torch.arange(5)).loss.backward()
    assert student.logits.grad is not None and student.features[0].grad is not None  # stage -2 is stage 0 here
    assert student.features[1].grad is None
    assert teacher.logits.grad is None and all(f.grad is None for f in teacher.features)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in c2kd.parameters())


def test_proxy_head_is_pool_linear_batchnorm_leaky_relu_linear():
    torch.manual_seed(0)
    head = ProxyHead(3, 5, 4).double()
    nn.init.normal_(head.norm.weight)
    nn.init.normal_(head.norm.bias)
    stage_map = torch.randn(6, 3, 2, 3, dtype=torch.float64)
    pooled = stage_map.mean((2, 3))
    hidden = pooled @ head.hidden.weight.T
    mean, variance = hidden.mean(0), hidden.var(0, unbiased=False)
    normed = (hidden - mean) / torch.sqrt(variance + 1e-5) * head.norm.weight + head.norm.bias
    expected = torch.where(normed > 0, normed, 0.1 * normed) @ head.classifier.weight.T + head.classifier.bias
    torch.testing.assert_close(head(stage_map), expected, rtol=FLOAT64, atol=FLOAT64)
    torch.testing.assert_close(head.norm.running_mean, 0.1 * mean)
    assert head.hidden.bias is None and head.norm.num_batches_tracked.item() == 1


def test_proxy_head_takes_a_batch_of_one_and_stays_float32_under_autocast():
    head = ProxyHead(3, 3, 4)
    assert head(torch.randn(1, 3, 2, 2)).shape == (1, 4)  # running statistics, no error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(4, 3, 2, 2, dtype=torch.bfloat16)).dtype == torch.float32
        c2kd = C2KD(SPEC, SPEC, num_samples=10)
        result = c2kd(output(torch.randn(4, 4).bfloat16()), output(torch.randn(4, 4).bfloat16()), torch.arange(4))
    assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)


def test_target_classes():
    teacher_logits = torch.tensor([[0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    labels = torch.tensor([3, -1, 0])
    auto = C2KD(SPEC, SPEC, num_samples=3, labels=labels)
    assert auto.target_classes(teacher_logits, labels).tolist() == [3, 0, 0]  # label, argmax for -1, label
    assert auto.target_classes(teacher_logits, None).tolist() == [1, 0, 2]  # no labels: argmax
    assert C2KD(SPEC, SPEC, num_samples=3, labels=labels, target="labels").target_classes(
        teacher_logits, labels).tolist() == [3, 0, 0]
    assert C2KD(SPEC, SPEC, num_samples=3, labels=labels, target="teacher").target_classes(
        teacher_logits, labels).tolist() == [1, 0, 2]


def test_the_target_class_changes_the_loss_only_through_the_non_target_term():
    c2kd, _, _ = stubbed()
    student = output(torch.tensor(STUDENT, dtype=torch.float64))
    teacher = output(torch.tensor(TEACHER, dtype=torch.float64))
    with_labels = c2kd(student, teacher, torch.arange(4), torch.tensor([3, 3, 3, 3]))
    without = c2kd(student, teacher, torch.arange(4))
    assert with_labels.logs["ofsd"].item() == pytest.approx(expected_parts([3, 3, 3, 3], 1.0, 0.0)["ofsd"], rel=FLOAT64)
    assert without.logs["ofsd"].item() == pytest.approx(expected_parts([0, 1, 2, 3], 1.0, 0.0)["ofsd"], rel=FLOAT64)
    assert with_labels.logs["proxy_student"].item() == without.logs["proxy_student"].item()


def test_options_defaults_and_weight():
    assert get_distiller("c2kd") is C2KD and C2KD.default_weight == 1.0
    assert distiller_options("c2kd") == {"temperature": 1.0, "krc_threshold": 0.0, "proxy_weight": 1.0,
                                         "ofsd_weight": 1.0, "proxy_stage": -2, "proxy_hidden": None,
                                         "target": "auto"}
    c2kd = C2KD(FeatureSpec((8, 16, 32), (2, 4, 8), 32, 10), FeatureSpec((4, 6, 12, 24), (2, 4, 8, 16), 24, 10),
                num_samples=10)
    assert (c2kd.student_stage, c2kd.teacher_stage) == (1, 2)  # the stage before the last on each side
    assert c2kd.student_proxy.hidden.weight.shape == (16, 16) and c2kd.teacher_proxy.hidden.weight.shape == (12, 12)
    assert c2kd.student_proxy.classifier.weight.shape == (10, 16)
    needs = c2kd.teacher_needs()
    assert needs.stages == frozenset({2}) and needs.logits and not needs.embedding


@pytest.mark.parametrize("options, message", [
    ({"temperature": 0}, "c2kd: 'temperature' must be a finite positive number, got 0"),
    ({"temperature": float("nan")}, "c2kd: 'temperature' must be a finite positive number, got nan"),
    ({"temperature": "1"}, "c2kd: 'temperature' must be a finite positive number, got '1'"),
    ({"krc_threshold": 1}, "c2kd: 'krc_threshold' must be a finite number in [-1, 1), got 1"),
    ({"krc_threshold": -1.5}, "c2kd: 'krc_threshold' must be a finite number in [-1, 1), got -1.5"),
    ({"krc_threshold": None}, "c2kd: 'krc_threshold' must be a finite number in [-1, 1), got None"),
    ({"proxy_weight": -1}, "c2kd: 'proxy_weight' must be a finite number >= 0, got -1"),
    ({"ofsd_weight": float("inf")}, "c2kd: 'ofsd_weight' must be a finite number >= 0, got inf"),
    ({"proxy_stage": 2}, "c2kd: 'proxy_stage' must be an integer in [-2, 1] (the paired encoders have 2 stages), "
                         "got 2"),
    ({"proxy_stage": -3}, "c2kd: 'proxy_stage' must be an integer in [-2, 1] (the paired encoders have 2 stages), "
                          "got -3"),
    ({"proxy_stage": True}, "c2kd: 'proxy_stage' must be an integer in [-2, 1] (the paired encoders have 2 "
                            "stages), got True"),
    ({"proxy_hidden": 0}, "c2kd: 'proxy_hidden' must be a positive integer, got 0"),
    ({"proxy_hidden": 2.5}, "c2kd: 'proxy_hidden' must be a positive integer, got 2.5"),
    ({"target": "label"}, "c2kd: 'target' must be one of 'auto', 'labels', 'teacher', got 'label'"),
    ({"target": "labels"}, "c2kd: 'target' is 'labels' but the run has no class labels (set loss.class_labels)"),
])
def test_rejects_bad_options(options, message):
    with pytest.raises(ConfigError) as raised:
        C2KD(SPEC, SPEC, num_samples=10, **options)
    assert str(raised.value) == message


@pytest.mark.parametrize("student_classes, teacher_classes", [(3, 5), (0, 3), (0, 0)])
def test_needs_matching_classifier_heads(student_classes, teacher_classes):
    with pytest.raises(ConfigError) as raised:
        C2KD(FeatureSpec((4,), (32,), 4, student_classes), FeatureSpec((4,), (32,), 4, teacher_classes),
             num_samples=10, proxy_stage=-1)
    assert str(raised.value) == (f"c2kd needs classifier heads with the same number of classes on student "
                                 f"({student_classes}) and teacher ({teacher_classes})")


def test_refuses_one_class_and_labels_beyond_the_classes():
    one = FeatureSpec((4,), (32,), 4, 1)
    with pytest.raises(ConfigError) as raised:
        C2KD(one, one, num_samples=10, proxy_stage=-1)
    assert str(raised.value) == "c2kd needs at least 2 classes (it ranks them and distils the non-target ones), got 1"
    with pytest.raises(ConfigError) as raised:
        C2KD(SPEC, SPEC, num_samples=3, labels=torch.tensor([0, 4, -1]))
    assert str(raised.value) == "c2kd: the class labels reach 4 but the classifier heads have 4 classes"
    C2KD(SPEC, SPEC, num_samples=3, labels=torch.tensor([0, 4, -1]), target="teacher")  # labels ignored


def test_state_round_trips_through_state_dict():
    torch.manual_seed(0)
    trained = C2KD(SPEC, SPEC, num_samples=10)
    student = output(torch.randn(5, 4), maps=[torch.randn(5, c, 2, 2) for c in SPEC.channels])
    teacher = output(torch.randn(5, 4), maps=[torch.randn(5, c, 2, 2) for c in SPEC.channels])
    trained(student, teacher, torch.arange(5))  # moves the BatchNorm statistics
    state = trained.state_dict()
    assert {"student_proxy.norm.running_mean", "teacher_proxy.norm.num_batches_tracked",
            "student_proxy.hidden.weight", "teacher_proxy.classifier.bias"} <= set(state)
    torch.manual_seed(1)
    restored = C2KD(SPEC, SPEC, num_samples=10)
    restored.load_state_dict(state)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key
    trained.eval()
    restored.eval()
    index = torch.arange(5)
    assert torch.equal(restored(student, teacher, index).loss, trained(student, teacher, index).loss)
