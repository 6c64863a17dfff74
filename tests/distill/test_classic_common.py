"""Behaviour every classic distiller shares, parametrised over all nine and the three logit methods of 2022-24: mismatched encoders, gradients that
reach the student and never the teacher, checkpoint round trips, and honest ``teacher_needs``."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from crossmodal.distill import registry
from crossmodal.distill.registry import create_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec

NAMES = ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "mlld", "c2kd"]

BATCH = 6
CLASSES = 5
# (spec, H x W of every stage): channels, sizes, stage counts and embedding sizes all differ; the first pair
# has the student taller but narrower than the teacher at some stages, the second a smaller, deeper student.
SPEC_PAIRS = {
    "deeper-teacher": (
        (FeatureSpec((8, 16, 24, 32), (4, 8, 16, 32), 32, CLASSES), [(20, 12), (10, 6), (5, 3), (3, 2)]),
        (FeatureSpec((6, 12, 20, 28, 40), (2, 4, 8, 16, 32), 40, CLASSES),
         [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]),
    ),
    "deeper-student": (
        (FeatureSpec((4, 8, 12, 16, 20), (2, 4, 8, 16, 32), 20, CLASSES),
         [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]),
        (FeatureSpec((24, 48, 64), (8, 16, 32), 64, CLASSES), [(12, 16), (6, 8), (3, 4)]),
    ),
}


def make_output(spec: FeatureSpec, sizes, requires_grad: bool, seed: int) -> EncoderOutput:
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)

    return EncoderOutput([tensor(BATCH, c, h, w).relu().detach().requires_grad_(requires_grad)
                          for c, (h, w) in zip(spec.channels, sizes)],
                         tensor(BATCH, spec.embed_dim), tensor(BATCH, spec.num_classes))


def leaves(output: EncoderOutput) -> list[torch.Tensor]:
    return [*output.features, output.embedding, output.logits]


@pytest.fixture(params=list(SPEC_PAIRS))
def specs(request):
    return SPEC_PAIRS[request.param]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_with_mismatched_encoders(name, specs):
    (student_spec, student_sizes), (teacher_spec, teacher_sizes) = specs
    torch.manual_seed(0)
    distiller = create_distiller(name, student_spec, teacher_spec, num_samples=100)
    student = make_output(student_spec, student_sizes, requires_grad=True, seed=1)
    teacher = make_output(teacher_spec, teacher_sizes, requires_grad=False, seed=2)
    result = distiller(student, teacher, torch.arange(BATCH))
    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    for key, value in result.logs.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key
        assert torch.isfinite(value), key
    result.loss.backward()
    student_grads = [t.grad for t in leaves(student) if t.grad is not None]
    assert student_grads and all(torch.isfinite(g).all() for g in student_grads)
    assert any(g.abs().sum() > 0 for g in student_grads)
    for parameter_name, parameter in distiller.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
    assert all(t.grad is None for t in leaves(teacher))


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_reaches_a_teacher_tensor_that_requires_grad(name, specs):
    (student_spec, student_sizes), (teacher_spec, teacher_sizes) = specs
    distiller = create_distiller(name, student_spec, teacher_spec, num_samples=100)
    student = make_output(student_spec, student_sizes, requires_grad=True, seed=1)
    teacher = make_output(teacher_spec, teacher_sizes, requires_grad=True, seed=2)
    distiller(student, teacher, torch.arange(BATCH)).loss.backward()
    assert all(t.grad is None for t in leaves(teacher))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_loss(name, specs):
    (student_spec, student_sizes), (teacher_spec, teacher_sizes) = specs
    torch.manual_seed(0)
    trained = create_distiller(name, student_spec, teacher_spec, num_samples=100)
    student = make_output(student_spec, student_sizes, requires_grad=True, seed=1)
    teacher = make_output(teacher_spec, teacher_sizes, requires_grad=False, seed=2)
    optimizer = torch.optim.SGD([*trained.parameters(), *leaves(student)], lr=0.1)
    trained(student, teacher, torch.arange(BATCH)).loss.backward()  # moves parameters and running statistics
    if list(trained.parameters()):
        optimizer.step()
    torch.manual_seed(1)
    fresh = create_distiller(name, student_spec, teacher_spec, num_samples=100)
    fresh.load_state_dict(trained.state_dict())
    for mode in ("train", "eval"):
        getattr(trained, mode)()
        getattr(fresh, mode)()
        expected = trained(student, teacher, torch.arange(BATCH)).loss
        assert torch.equal(fresh(student, teacher, torch.arange(BATCH)).loss, expected), mode


class _Recorder(EncoderOutput):
    """An EncoderOutput that records which stages and fields are read."""

    def __init__(self, output: EncoderOutput) -> None:
        recorder = self

        class Features(list):
            def __getitem__(self, position):
                recorder.read_stages.add(range(len(self))[position])
                return super().__getitem__(position)

            def __iter__(self):
                recorder.read_stages.update(range(len(self)))
                return super().__iter__()

        self.read_stages: set[int] = set()
        self.read_fields: set[str] = set()
        super().__init__(Features(output.features), output.embedding, output.logits)

    def __getattribute__(self, name):
        if name in ("embedding", "logits"):
            object.__getattribute__(self, "read_fields").add(name)
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_needs_lists_exactly_what_forward_reads(name, specs):
    (student_spec, student_sizes), (teacher_spec, teacher_sizes) = specs
    distiller = create_distiller(name, student_spec, teacher_spec, num_samples=100)
    needs = distiller.teacher_needs()
    assert all(0 <= stage < teacher_spec.num_stages for stage in needs.stages)
    student = make_output(student_spec, student_sizes, requires_grad=True, seed=1)
    recorder = _Recorder(make_output(teacher_spec, teacher_sizes, requires_grad=False, seed=2))
    recorder.read_fields.clear()
    distiller(student, recorder, torch.arange(BATCH))
    assert recorder.read_stages == set(needs.stages)
    assert ("embedding" in recorder.read_fields) == needs.embedding
    assert ("logits" in recorder.read_fields) == needs.logits

    # A teacher output holding only what is needed (the feature cache's view) is enough.
    full = make_output(teacher_spec, teacher_sizes, requires_grad=False, seed=2)
    stripped = EncoderOutput([f if i in needs.stages else None for i, f in enumerate(full.features)],
                             full.embedding if needs.embedding else None, full.logits if needs.logits else None)
    assert torch.isfinite(distiller(student, stripped, torch.arange(BATCH)).loss)


@pytest.mark.parametrize("name", NAMES)
def test_default_weight_is_repdistillers(name):
    """RepDistiller's weights; the 2022-24 logit methods' papers add theirs to a CE of 1 with weight 1."""
    expected = {"kd": 0.9, "fitnet": 100, "at": 1000, "sp": 3000, "cc": 0.02, "vid": 1, "rkd": 1, "pkt": 30000,
                "nst": 50, "dkd": 1, "mlld": 1, "c2kd": 1}
    assert registry.get_distiller(name).default_weight == pytest.approx(expected[name])


def test_options_and_defaults():
    expected = {"kd": {"temperature": 4.0}, "fitnet": {"stage": None}, "at": {"p": 2.0, "stages": None},
                "sp": {"stages": None}, "cc": {"feat_dim": 128}, "vid": {"stages": None, "init_pred_var": 5.0,
                                                                          "eps": 1e-5},
                "rkd": {"distance_weight": 25.0, "angle_weight": 50.0}, "pkt": {}, "nst": {"stages": None},
                "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20, "target": "auto"},
                "mlld": {"temperatures": (2.0, 3.0, 4.0, 5.0, 6.0), "instance_weight": 1.0, "batch_weight": 1.0,
                         "class_weight": 1.0},
                "c2kd": {"temperature": 1.0, "krc_threshold": 0.0, "proxy_weight": 1.0, "ofsd_weight": 1.0,
                         "proxy_stage": -2, "proxy_hidden": None, "target": "auto"}}
    assert {name: registry.distiller_options(name) for name in NAMES} == expected


def test_every_encoder_output_field_is_covered():
    # Guards the recorder above: a new EncoderOutput field would need tracking too.
    assert [f.name for f in fields(EncoderOutput)] == ["features", "embedding", "logits"]
