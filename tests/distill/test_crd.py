"""The CRD distiller: against RepDistiller's per-sample gather, its memory, Z, gradients, autocast, evaluation,
checkpoints and every option. (Its objective and sampler have files of their own.)"""
from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _crd_bounds import float32_bounds, mixed_row_tolerance, standardised_error, z_tolerance

from crossmodal.distill import create_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from tolerance import gamma

STUDENT = FeatureSpec(channels=(4, 12), reductions=(2, 4), embed_dim=12)
TEACHER = FeatureSpec(channels=(6, 10), reductions=(2, 4), embed_dim=10)
N, K, B = 40, 16, 6
FEAT_DIM = 8  # make_crd's embedding size


def load_experiment(name: str):
    """A script of experiments/ as a module (they are scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_crd(**options):
    torch.manual_seed(0)
    options = {"feat_dim": FEAT_DIM, "num_negatives": K, **options}
    return create_distiller("crd", STUDENT, TEACHER, num_samples=N, **options)


def outputs(generator, batch=B, student_grad=True):
    student = torch.randn(batch, STUDENT.embed_dim, generator=generator).requires_grad_(student_grad)
    teacher = torch.randn(batch, TEACHER.embed_dim, generator=generator)
    return EncoderOutput([], student), EncoderOutput([], teacher)


@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_matches_repdistiller_per_sample_gather_over_steps(scoring):
    """Same rows in, same loss, gradients (inputs and heads), banks and Z out, step after step, within what
    float32 arithmetic allows (:func:`float32_bounds`; the reference runs in float64)."""
    bench = load_experiment("bench_crd")
    crd = make_crd(scoring=scoring, head_batchnorm=False)  # RepDistiller's bare linear heads
    reference = bench.PerSampleGatherCRD(12, 8, N, K)
    reference.embed_t = torch.nn.Linear(10, 8)
    bench.copy_into(crd, reference)
    reference.double()
    generator = torch.Generator().manual_seed(3)
    bank_error, z_error = 0.0, {}
    for _ in range(3):
        student, teacher = outputs(generator)
        index = torch.randperm(N, generator=generator)[:B]
        contrast = torch.randint(N, (B, K + 1), generator=generator)
        contrast[:, 0] = index
        student64, teacher64 = student.embedding.detach().double().requires_grad_(), teacher.embedding.double()
        bound = float32_bounds(reference, student64.detach(), teacher64, contrast, bank_error, z_error)
        crd.zero_grad()
        loss = crd(student, teacher, index, contrast_index=contrast).loss
        loss.backward()
        reference.zero_grad()
        reference_loss = reference(student64, teacher64, index, contrast)
        reference_loss.backward()
        assert abs(float(loss.detach()) - float(reference_loss.detach())) <= bound["loss"]
        for ours, theirs, name in (
                (student.embedding.grad, student64.grad, "input_grad"),
                (crd.embed_student.linear.weight.grad, reference.embed_s.weight.grad, "student_weight_grad"),
                (crd.embed_teacher.linear.weight.grad, reference.embed_t.weight.grad, "teacher_weight_grad"),
                (crd.student_memory.rows, reference.memory_v1, "bank"),
                (crd.teacher_memory.rows, reference.memory_v2, "bank")):
            torch.testing.assert_close(ours.double(), theirs, atol=bound[name], rtol=0, msg=name)
        bank_error = bound["bank"]
        assert float(crd.z_student) == pytest.approx(reference.z_v1, rel=z_error["student"])
        assert float(crd.z_teacher) == pytest.approx(reference.z_v2, rel=z_error["teacher"])


def test_gradients_reach_the_heads_and_the_student_only():
    crd = make_crd()
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    teacher.embedding.requires_grad_()
    crd(student, teacher, torch.arange(B)).loss.backward()
    assert student.embedding.grad is not None and student.embedding.grad.abs().sum() > 0
    assert teacher.embedding.grad is None
    for head in (crd.embed_student, crd.embed_teacher):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    buffers = dict(crd.named_buffers())
    assert {"student_memory.rows", "teacher_memory.rows", "z_student", "z_teacher"} <= set(buffers)
    assert not any(b.requires_grad for b in buffers.values())
    assert {name for name, _ in crd.named_parameters()} == {
        "embed_student.linear.weight", "embed_student.linear.bias",
        "embed_teacher.linear.weight", "embed_teacher.linear.bias"}


def test_bank_update_mixes_with_momentum_and_renormalises():
    crd = make_crd(momentum=0.5)
    before_s, before_t = crd.student_memory.rows.clone(), crd.teacher_memory.rows.clone()
    assert before_s.abs().max() <= 1 / math.sqrt(8 / 3)
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    index = torch.tensor([3, 7, 11, 19, 23, 39])
    crd(student, teacher, index)
    embed_s = crd.embed_student(student.embedding).detach()
    embed_t = crd.embed_teacher(teacher.embedding).detach()
    for rows, before, embed in ((crd.student_memory.rows, before_s, embed_s), (crd.teacher_memory.rows, before_t, embed_t)):
        torch.testing.assert_close(rows[index], F.normalize(0.5 * before[index] + 0.5 * embed), rtol=0,
                                   atol=mixed_row_tolerance(before[index], embed, 0.5))
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(crd.student_memory.rows[untouched], before_s[untouched])
    # unit rows: the normalisation's gamma(d + 3) and the norm's own gamma(d + 1) (squares, sum, sqrt)
    torch.testing.assert_close(crd.student_memory.rows[index].norm(dim=1), torch.ones(B), rtol=0, atol=gamma(2 * FEAT_DIM + 4))


def _scores_for(crd, student, teacher, contrast):
    """The student-anchor scores a step computes, from the memory as it is before the step."""
    anchor = crd.embed_student(student.embedding).detach()
    rows = crd.teacher_memory.rows
    return torch.bmm(rows[contrast], anchor.unsqueeze(2)).squeeze(2)


def test_z_is_estimated_from_the_first_batch_then_fixed():
    crd = make_crd()
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    contrast = torch.randint(N, (B, K + 1), generator=generator)
    scores = _scores_for(crd, student, teacher, contrast)
    crd(student, teacher, contrast[:, 0], contrast_index=contrast)
    row_norm = float(crd.teacher_memory.rows[contrast].norm(dim=2).max())
    assert float(crd.z_student) == pytest.approx(float(torch.exp(scores / 0.07).mean()) * N,
                                                 rel=z_tolerance(scores, row_norm, FEAT_DIM))
    first = float(crd.z_student)
    crd(*outputs(generator), torch.arange(B))
    assert float(crd.z_student) == first


def test_z_as_moving_average():
    crd = make_crd(normalization="ema", z_momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    crd(*outputs(generator), torch.arange(B))
    first = float(crd.z_student)
    student, teacher = outputs(generator)
    contrast = torch.randint(N, (B, K + 1), generator=generator)
    scores = _scores_for(crd, student, teacher, contrast)
    row_norm = float(crd.teacher_memory.rows[contrast].norm(dim=2).max())
    estimate = float(torch.exp(scores / 0.07).mean()) * N
    crd(student, teacher, contrast[:, 0], contrast_index=contrast)
    # the first Z is the same number on both sides; the new estimate's error is weighted by 0.1 (float64 after)
    expected = 0.9 * first + 0.1 * estimate
    assert float(crd.z_student) == pytest.approx(expected, rel=0.1 * estimate * z_tolerance(scores, row_norm, FEAT_DIM) / expected)


def test_finite_and_close_under_bfloat16_autocast():
    """Under autocast only the heads' linear layers round to bfloat16 (CRD's own contrast runs in float32), so the
    loss may move by what the anchors' measured change allows and no more."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    contrast = torch.randint(N, (B, K + 1), generator=generator)
    reference = make_crd()
    anchors = (reference.embed_student(student.embedding), reference.embed_teacher(teacher.embedding))
    banks = (reference.teacher_memory.rows.clone(), reference.student_memory.rows.clone())
    reference_loss = reference(student, teacher, contrast[:, 0], contrast_index=contrast).loss
    crd = make_crd()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = (crd.embed_student(student.embedding), crd.embed_teacher(teacher.embedding))
        loss = crd(student, teacher, contrast[:, 0], contrast_index=contrast).loss
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(student.embedding.grad).all()
    assert crd.student_memory.rows.dtype == torch.float32
    # A score s = m . v moves by at most |dv| |m| and its exponent s / T by that over T, plus Z's move (the log of
    # a mean of exp(s / T), so at most the largest such); a loss term log(1 + q) or log1p(1 / q) moves with the
    # exponent at a rate of at most |sigma - [positive]| e^(its move), sigma = q / (1 + q) (mean value theorem).
    # The loss is the sum over the B anchors and both directions divided by B; float32's own rounding of it is
    # below 1e-4 of that (test_matches_repdistiller_per_sample_gather_over_steps) and is added as such.
    bound = 0.0
    for anchor, anchor_low, bank in zip(anchors, low, banks):
        rows = bank[contrast]
        move = (anchor.detach() - anchor_low.detach().float()).norm(dim=1)[:, None] * rows.norm(dim=2) / 0.07
        move = move + move.max()
        scores = torch.einsum("bkd,bd->bk", rows, anchor.detach())
        q = torch.exp(scores / 0.07) / float(torch.exp(scores / 0.07).mean()) / K
        rate = (q / (1 + q) - F.one_hot(torch.zeros(B, dtype=torch.long), K + 1)).abs() * move.exp()
        bound += float((rate * move).sum()) / B
    difference = abs(float(loss.detach()) - float(reference_loss.detach()))
    assert difference <= bound + 1e-4 * float(reference_loss.detach())
    assert bound < 0.1 * float(reference_loss.detach())  # and the bound itself is tight enough to mean something


def test_state_dict_round_trip_continues_identically():
    generator = torch.Generator().manual_seed(0)
    crd = make_crd(mode="relax", negatives="other_classes", labels=torch.arange(N) % 3)
    for _ in range(2):
        crd(*outputs(generator), torch.randperm(N, generator=generator)[:B])
    buffer = io.BytesIO()
    torch.save(crd.state_dict(), buffer)
    buffer.seek(0)
    restored = make_crd(mode="relax", negatives="other_classes", labels=torch.arange(N) % 3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    batch = outputs(generator)
    index = torch.randperm(N, generator=generator)[:B]
    first, second = crd(*batch, index), restored(*batch, index)
    assert torch.equal(first.loss, second.loss)
    assert torch.equal(crd.student_memory.rows, restored.student_memory.rows)
    assert float(restored.z_student) == float(crd.z_student) > 0


@pytest.mark.parametrize("options", [
    {"objective": "info_nce"}, {"shared_negatives": True}, {"memory": "queue", "queue_size": 20},
    {"memory": "queue", "shared_negatives": True, "objective": "info_nce"}, {"normalization": "ema"},
    {"scoring": "gather"}, {"mode": "relax", "labels": torch.arange(N) % 5},
])
def test_every_option_trains(options):
    """A student embedding optimised by CRD alone comes to score its own teacher row highest."""
    crd = make_crd(**options)
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(N, TEACHER.embed_dim, generator=generator)
    student = torch.nn.Parameter(torch.randn(N, STUDENT.embed_dim, generator=generator))
    optimiser = torch.optim.SGD([student, *crd.parameters()], lr=0.5, momentum=0.9)
    losses = []
    for step in range(40):
        index = torch.randperm(N, generator=generator)[:B]
        result = crd(EncoderOutput([], student[index]), EncoderOutput([], teacher[index]), index)
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        losses.append(float(result.loss.detach()))
        assert all(torch.isfinite(v) for v in result.logs.values())
    assert sum(losses[-10:]) < sum(losses[:10])


def test_queue_enqueues_the_gathered_batch():
    crd = make_crd(memory="queue", queue_size=10)
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    crd(student, teacher, torch.arange(B))
    embed_s = crd.embed_student(student.embedding).detach()
    assert torch.equal(crd.student_memory.rows[:B], embed_s)  # a queue stores the embeddings as they are
    assert int(crd.student_memory.head) == B
    crd(*outputs(generator), torch.arange(B))
    assert int(crd.student_memory.head) == (2 * B) % 10


@pytest.mark.parametrize("options, message", [
    ({"negatives": "other"}, "negatives must be one of"),
    ({"shared_negatives": True, "negatives": "other_classes", "labels": torch.arange(N) % 2},
     "shared negatives cannot exclude"),
    ({"mode": "relax"}, "needs class labels"),
    ({"mode": "relax", "labels": torch.full((N,), -1)}, "are unlabelled"),
    ({"memory": "queue", "mode": "relax", "labels": torch.arange(N) % 2}, "queue has no row per sample"),
    ({"temperature": 0}, "temperature must be a positive number"),
    ({"num_negatives": 0}, "num_negatives must be an integer >= 1"),
    ({"queue_size": 0, "memory": "queue"}, "queue_size must be an integer >= 1"),
    ({"queue_size": 2.5, "memory": "queue"}, "queue_size must be an integer"),
    ({"momentum": "0.5"}, "momentum must be a number in"),
    ({"temperature": float("nan")}, "temperature must be a positive number"),
    ({"z_momentum": None}, "z_momentum must be a number"),
    ({"seed": "a"}, "seed must be an integer"),
    ({"shared_negatives": "yes"}, "shared_negatives must be true or false"),
    ({"negatives_from": "all"}, "has no option 'negatives_from'"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_crd(**options)


def test_an_index_outside_the_transfer_set_is_a_clear_error():
    crd = make_crd()
    with pytest.raises(ConfigError, match="outside the transfer set of 40 samples"):
        crd(*outputs(torch.Generator().manual_seed(0)), torch.arange(B) + N - 2)


def test_a_weighted_loss_scales_every_gradient():
    generator = torch.Generator().manual_seed(0)
    student, teacher = outputs(generator)
    grads = []
    for weight in (1.0, 0.5):  # a power of two: every product of the backward pass scales exactly, no rounding
        crd = make_crd()
        leaf = student.embedding.detach().clone().requires_grad_()
        (weight * crd(EncoderOutput([], leaf), teacher, torch.arange(B)).loss).backward()
        grads.append((leaf.grad, crd.embed_student.linear.weight.grad))
    for unweighted, weighted in zip(*grads):
        assert torch.equal(weighted, 0.5 * unweighted)


def test_double_backward_is_refused_rather_than_wrong():
    crd = make_crd()
    student, teacher = outputs(torch.Generator().manual_seed(0))
    loss = crd(student, teacher, torch.arange(B)).loss
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, student.embedding, create_graph=True)


def test_bank_momentum_is_the_weight_of_the_old_row():
    crd = make_crd(momentum=0.9)
    before = crd.student_memory.rows.clone()
    student, teacher = outputs(torch.Generator().manual_seed(0))
    index = torch.arange(B)
    crd(student, teacher, index)
    embed_s = crd.embed_student(student.embedding).detach()
    torch.testing.assert_close(crd.student_memory.rows[index], F.normalize(0.9 * before[index] + 0.1 * embed_s),
                               rtol=0, atol=mixed_row_tolerance(before[index], embed_s, 0.9))


def test_repeated_indices_keep_the_last_embedding():
    crd = make_crd(momentum=0.0)
    student, teacher = outputs(torch.Generator().manual_seed(0))
    crd(student, teacher, torch.tensor([5, 5, 6, 5, 7, 8]))
    embed_s = crd.embed_student(student.embedding).detach()
    # momentum 0 stores normalize(e) of a unit e: the normalisation's gamma(d + 3)
    torch.testing.assert_close(crd.student_memory.rows[5], embed_s[3], rtol=0, atol=gamma(FEAT_DIM + 3))


def test_queue_positive_is_the_other_modality_now_and_large_batches_keep_their_newest_rows():
    crd = make_crd(memory="queue", queue_size=4, objective="info_nce")
    student, teacher = outputs(torch.Generator().manual_seed(0))
    result = crd(student, teacher, torch.arange(B))
    embed_s = crd.embed_student(student.embedding).detach()
    embed_t = crd.embed_teacher(teacher.embedding).detach()
    # the mean over B of dot products of unit d-vectors, on each side within gamma(d + B) (absolute: it may be ~0)
    assert float(result.logs["positive_score"]) == pytest.approx(float((embed_s * embed_t).sum(1).mean()),
                                                                 rel=0, abs=2 * gamma(FEAT_DIM + B))
    # a batch of 6 into a queue of 4: the last 4 embeddings, in order from the head
    assert torch.equal(crd.student_memory.rows, embed_s[-4:])


def test_evaluation_changes_nothing_and_is_repeatable():
    crd = make_crd(normalization="ema")
    generator = torch.Generator().manual_seed(0)
    crd(*outputs(generator), torch.arange(B))
    state = {k: v.clone() for k, v in crd.state_dict().items() if torch.is_tensor(v)}
    draws = crd.sampler.draws
    batch = outputs(generator)
    crd.eval()
    first = crd(*batch, torch.arange(B) + 10).loss
    with torch.no_grad():
        crd.train()
        second = crd(*batch, torch.arange(B) + 10).loss
    assert float(first.detach()) == float(second)  # the same computation: the same bits
    assert crd.sampler.draws == draws
    for key, value in crd.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, state[key]), key


def test_evaluation_before_any_training_step_estimates_z_without_storing_it():
    crd = make_crd().eval()
    loss = crd(*outputs(torch.Generator().manual_seed(0)), torch.arange(B)).loss
    assert torch.isfinite(loss) and float(crd.z_student) == -1.0


def test_memory_stays_float32_when_the_module_is_cast():
    crd = make_crd().to(torch.float64)
    generator = torch.Generator().manual_seed(0)
    student = EncoderOutput([], torch.randn(B, 12, generator=generator, dtype=torch.float64))
    teacher = EncoderOutput([], torch.randn(B, 10, generator=generator, dtype=torch.float64))
    assert torch.isfinite(crd(student, teacher, torch.arange(B)).loss)


def test_crd_learns_to_pair_post_relu_embeddings_only_with_the_centred_head():
    """A student seeing a noisy linear view of post-ReLU teacher embeddings (what a CNN's pooled embedding is):
    with the default BatchNorm heads CRD pairs nearly every sample; RepDistiller's bare heads stay at chance."""
    check = load_experiment("crd_head_check")
    centred = check.retrieval_after_training(post_relu=True, head_batchnorm=True, num=256, dim=64, epochs=8)
    bare = check.retrieval_after_training(post_relu=True, head_batchnorm=False, num=256, dim=64, epochs=8)
    assert centred > 0.9 and bare < 0.05  # chance is 1/256


def test_the_head_batchnorm_centres_over_the_batch_and_keeps_running_statistics():
    crd = make_crd()
    features = torch.rand(B, STUDENT.embed_dim) + 5.0  # all positive, large common mean
    out = crd.embed_student(features)
    linear = crd.embed_student.linear(features)
    standard = (linear - linear.mean(0)) / torch.sqrt(linear.var(0, unbiased=False) + 1e-5)
    expected = F.normalize(standard, dim=1)
    # Two float32 evaluations, each within: the mean of B values and the subtraction err by gamma(B + 1) of the
    # column's largest |value|, which the standard deviation turns into e = gamma(B + 1) max|x| / std per column
    # (the centring's cancellation: a large common mean); a standardised value z errs by e (1 + |z|)
    # + gamma(B + 4) |z| (the variance's sum and the rsqrt), the unit row by that over |z| + gamma(d + 3).
    with torch.no_grad():
        one = standardised_error(linear, standard, count=B)
    torch.testing.assert_close(out, expected, rtol=0, atol=2 * one)
    norm = crd.embed_student.norm
    # from zeros, lerp with weight 0.1 is one product and at most one more rounding; the means are the same op
    torch.testing.assert_close(norm.running_mean, 0.1 * linear.mean(0).detach(), rtol=gamma(3), atol=0)
    assert int(norm.num_batches_tracked) == 1
    crd.eval()  # evaluation uses the running statistics and leaves them alone
    before = norm.running_mean.clone()
    crd.embed_student(features)
    assert torch.equal(norm.running_mean, before)
    assert not any("norm" in name for name, _ in crd.named_parameters())  # no affine parameters
