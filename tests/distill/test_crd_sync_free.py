"""CRD's step without host reads: Z on the device, the bank's duplicate rule without ``torch.unique``, and the
teacher cache looked up on the device. The values equal those of the former host-reading code, kept here as
the reference."""
from __future__ import annotations

import contextlib
import io
import types
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from crossmodal.distill import create_distiller
from crossmodal.distill.contrast import MemoryBank, mean_exp_score
from crossmodal.distill.contrast.memory import last_occurrence
from crossmodal.distill.crd import CRD
from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.models import Encoder, FrozenTeacher, TeacherNeeds
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from crossmodal.runtime import all_reduce_mean
from crossmodal.train.distillation import DistillTask, TeacherView
from tolerance import FLOAT64, gamma

STUDENT = FeatureSpec(channels=(4, 12), reductions=(2, 4), embed_dim=12)
TEACHER = FeatureSpec(channels=(6, 10), reductions=(2, 4), embed_dim=10)
N, K, B = 40, 16, 8
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# --------------------------------------------------------------------------- the former code, as reference
@torch.no_grad()
def former_bank_update(bank: MemoryBank, index: torch.Tensor, embeddings: torch.Tensor) -> None:
    """MemoryBank.update before this change: repeated indices reduced with torch.unique."""
    unique, inverse = torch.unique(index, return_inverse=True)
    if unique.numel() != index.numel():
        positions = torch.arange(index.numel(), device=index.device)
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, positions, reduce="amax")
        index, embeddings = unique, embeddings[last]
    mixed = bank.rows.index_select(0, index).mul_(bank.momentum).add_(embeddings.to(bank.rows.dtype),
                                                                      alpha=1.0 - bank.momentum)
    bank.rows.index_copy_(0, index, F.normalize(mixed, dim=1))


@torch.no_grad()
def former_normalizer(crd: CRD, z: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      update: bool) -> float:
    """CRD._normalizer before this change: Z read to a Python float every step."""
    current = float(z)
    if current > 0 and (crd.normalization == "first_batch" or not update):
        return current
    count = positive.numel() + negative.numel()
    batch_mean = mean_exp_score(positive, negative, crd.temperature)
    if update:
        batch_mean = all_reduce_mean(batch_mean, count)
    estimate = float(batch_mean) * crd.num_samples
    if not update:
        return estimate
    z.fill_(estimate if current <= 0 else crd.z_momentum * current + (1.0 - crd.z_momentum) * estimate)
    return float(z)


def make_crd(former: bool = False, **options) -> CRD:
    torch.manual_seed(0)
    crd = create_distiller("crd", STUDENT, TEACHER, num_samples=N, **{"feat_dim": 8, "num_negatives": K,
                                                                        **options})
    if former:
        crd._normalizer = types.MethodType(former_normalizer, crd)
        for memory in (crd.student_memory, crd.teacher_memory):
            if isinstance(memory, MemoryBank):
                memory.update = types.MethodType(former_bank_update, memory)
    return crd


def batches(steps: int, duplicates: bool = True) -> Iterator[tuple[EncoderOutput, EncoderOutput, torch.Tensor]]:
    """Random embeddings with indices that repeat within the batch (3 of 8 positions share one row)."""
    generator = torch.Generator().manual_seed(5)
    for _ in range(steps):
        index = torch.randint(N, (B,), generator=generator)
        if duplicates:
            index[[1, 4, 6]] = int(index[1])
        student = torch.randn(B, STUDENT.embed_dim, generator=generator).requires_grad_()
        teacher = torch.randn(B, TEACHER.embed_dim, generator=generator)
        yield EncoderOutput([], student), EncoderOutput([], teacher), index


# --------------------------------------------------------------------------- values unchanged
def test_last_occurrence_points_every_position_at_the_last_one_with_its_index():
    index = torch.tensor([5, 5, 6, 5, 7, 6, 0])
    assert last_occurrence(index, num_rows=8).tolist() == [3, 3, 5, 3, 4, 5, 6]
    assert last_occurrence(torch.tensor([], dtype=torch.long), num_rows=8).numel() == 0


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_bank_update_with_repeated_indices_equals_the_former_rule(momentum):
    new, former = MemoryBank(N, 8, momentum, seed=3), MemoryBank(N, 8, momentum, seed=3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        index = torch.randint(N, (24,), generator=generator)  # 24 draws from 40 rows: repeats every time
        embeddings = F.normalize(torch.randn(24, 8, generator=generator), dim=1)
        new.update(index, embeddings)
        former_bank_update(former, index, embeddings)
        assert torch.equal(new.rows, former.rows)


OPTIONS = {
    "first_batch": {},
    "ema": {"normalization": "ema", "z_momentum": 0.9},
    "gather": {"scoring": "gather"},
    "shared": {"shared_negatives": True},
    "relax-other-classes": {"mode": "relax", "negatives": "other_classes", "labels": torch.arange(N) % 4},
    "bare-heads": {"head_batchnorm": False},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_steps_with_repeated_indices_equal_the_former_code(options):
    """Loss, gradients, banks and Z after each of several steps, then an evaluation, as before."""
    new, former = make_crd(**options), make_crd(former=True, **options)
    for student, teacher, index in batches(4):
        twin = EncoderOutput([], student.embedding.detach().clone().requires_grad_())
        result, expected = new(student, teacher, index), former(twin, teacher, index)
        result.loss.backward()
        expected.loss.backward()
        assert torch.equal(result.loss, expected.loss)
        assert torch.equal(student.embedding.grad, twin.embedding.grad)  # the same operations on the same values
        for name, value in former.state_dict().items():
            if torch.is_tensor(value):
                assert torch.equal(new.state_dict()[name], value), name
        for name in ("z_student", "z_teacher"):
            assert torch.equal(result.logs[name], expected.logs[name])
    new.eval(), former.eval()
    student, teacher, index = next(batches(1))
    assert torch.equal(new(student, teacher, index).loss, former(student, teacher, index).loss)


@pytest.mark.parametrize("normalization", ["first_batch", "ema"])
def test_evaluation_before_training_and_a_loaded_state_use_z_as_before(normalization):
    """Before any step evaluation estimates Z without storing it; after a load the flag that skips the
    estimate is cleared, and the loaded Z is used (not re-estimated) either way."""
    new, former = make_crd(normalization=normalization), make_crd(former=True, normalization=normalization)
    steps = list(batches(3))
    new.eval(), former.eval()
    assert torch.equal(new(*steps[0]).loss, former(*steps[0]).loss)
    assert float(new.z_student) == -1.0
    new.train(), former.train()
    new(*steps[0]), former(*steps[0])
    buffer = io.BytesIO()
    torch.save(new.state_dict(), buffer)
    buffer.seek(0)
    restored = make_crd(normalization=normalization)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert not restored._z_known_set
    for student, teacher, index in steps[1:]:
        first, second, third = new(student, teacher, index), restored(student, teacher, index), \
            former(student, teacher, index)
        assert torch.equal(first.loss, second.loss) and torch.equal(first.loss, third.loss)
        assert torch.equal(restored.z_student, former.z_student) and torch.equal(new.z_teacher, former.z_teacher)
    assert restored._z_known_set


# --------------------------------------------------------------------------- no host read in the step
def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"host read in the step: {name}")
    return refuse


def _is_mask(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(torch.is_tensor(k) and k.dtype in (torch.bool, torch.uint8) for k in keys)


@contextlib.contextmanager
def no_host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every tensor-to-host read raise while the block runs: ``item``, ``float(t)``, ``int(t)``,
    ``bool(t)`` (``if t:``), ``tolist``, ``cpu``, ``numpy``, ``nonzero``, ``unique`` and boolean-mask indexing
    (on CUDA each waits for the device)."""
    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def checked_getitem(self, key):
        if _is_mask(key):
            raise AssertionError("host read in the step: boolean mask indexing")
        return getitem(self, key)

    def checked_setitem(self, key, value):
        if _is_mask(key):
            raise AssertionError("host read in the step: boolean mask assignment")
        return setitem(self, key, value)

    with monkeypatch.context() as patch:
        for name in ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "cpu", "numpy",
                     "nonzero", "unique", "masked_select"):
            patch.setattr(torch.Tensor, name, _refuse(f"Tensor.{name}"))
        for name in ("unique", "nonzero", "masked_select", "unique_consecutive"):
            patch.setattr(torch, name, _refuse(f"torch.{name}"))
        patch.setattr(torch.Tensor, "__getitem__", checked_getitem)
        patch.setattr(torch.Tensor, "__setitem__", checked_setitem)
        yield


def _skip_cpu_range_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index range checks run on CPU indices only (on a device they would wait): leave them out here."""
    monkeypatch.setattr(CRD, "_check_index", lambda self, index: None)
    monkeypatch.setattr(TeacherFeatureCache, "_check_range", lambda self, rows: None)


def test_the_guard_catches_host_reads(monkeypatch):
    value = torch.ones(3)
    for read in (lambda: float(value.sum()), lambda: value.sum().item(), lambda: bool(value.sum() > 0),
                 lambda: value[value > 0], lambda: torch.unique(value), lambda: value.tolist(),
                 lambda: int(value.sum()), lambda: value.nonzero()):
        with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="host read"):
            read()
    assert float(value.sum()) == 3.0  # restored after the block


def test_the_guard_fails_the_former_step(monkeypatch):
    _skip_cpu_range_checks(monkeypatch)
    crd = make_crd(former=True)
    with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="host read in the step"):
        crd(*next(batches(1)))


@pytest.mark.parametrize("options", [*OPTIONS.values(), {"objective": "info_nce"},
                                     {"memory": "queue", "queue_size": 20}],
                         ids=[*OPTIONS.keys(), "info_nce", "queue"])
def test_crd_steps_make_no_host_read(monkeypatch, options):
    """The first step (which sets Z), later steps, an evaluation and a step after a load: forward and backward."""
    _skip_cpu_range_checks(monkeypatch)
    crd = make_crd(**options)
    steps = list(batches(4))
    for number, (student, teacher, index) in enumerate(steps):
        if number == 2:
            crd.load_state_dict(crd.state_dict())
        with no_host_reads(monkeypatch):
            result = crd(student, teacher, index)
            (0.8 * result.loss).backward()
    crd.eval()
    with no_host_reads(monkeypatch), torch.no_grad():
        crd(*steps[0])
    assert torch.isfinite(result.loss) and student.embedding.grad is not None


def _cached_task(synthetic_file, tmp_path) -> DistillTask:
    """A CE + CRD+KD DistillTask of a tiny student, the teacher served by an in-memory feature cache."""
    from crossmodal.data.dataset import PairedDataset

    torch.manual_seed(0)
    teacher = FrozenTeacher(Encoder("test_resnet", in_chans=3, num_classes=10, small_input=True))
    student = Encoder("test_resnet", in_chans=1, num_classes=10, small_input=True)
    data = PairedDataset(synthetic_file, "train", modalities=["rgb"])
    crd_kd = create_distiller("crd+kd", student.spec, teacher.spec, num_samples=len(data),
                              crd={"feat_dim": 8, "num_negatives": 16})
    cache = TeacherFeatureCache.build_or_load(tmp_path / "cache.h5", teacher, data, "rgb", crd_kd.teacher_needs(),
                                              batch_size=16, progress=False)
    return DistillTask(student, "depth", TeacherView(teacher, "rgb", cache), {"crd+kd": crd_kd}, {"crd+kd": 1.0},
                       ce_weight=1.0, class_labels="label")


def test_a_cached_distillation_task_step_makes_no_host_read(monkeypatch, synthetic_file, tmp_path):
    _skip_cpu_range_checks(monkeypatch)
    task = _cached_task(synthetic_file, tmp_path).train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = {"depth": torch.randn(B, 1, 32, 32, generator=generator),
                 "index": torch.randint(len(task.teacher.cache), (B,), generator=generator),
                 "label": torch.randint(-1, 10, (B,), generator=generator)}
        with no_host_reads(monkeypatch):
            loss, logs = task(batch)
            loss.backward()
    assert torch.isfinite(loss) and {"ce", "crd+kd", "crd+kd/crd/z_student"} <= set(logs)


# --------------------------------------------------------------------------- the teacher cache
def former_lookup(cache: TeacherFeatureCache, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """TeacherFeatureCache.lookup's in-memory path before this change: through the CPU."""
    rows = index.detach().to("cpu", torch.int64).reshape(-1)
    return {name: cache._memory[name].index_select(0, rows).to(index.device, torch.float32)
            for name in cache.names}


def test_cache_lookup_on_the_arrays_device_equals_the_former_lookup(synthetic_file, tmp_path):
    from crossmodal.data.dataset import PairedDataset

    torch.manual_seed(0)
    teacher = FrozenTeacher(Encoder("test_resnet", in_chans=3, num_classes=10, small_input=True))
    data = PairedDataset(synthetic_file, "train", modalities=["rgb"])
    needs = TeacherNeeds(stages=frozenset({1, 4}), embedding=True, logits=True)
    cache = TeacherFeatureCache.build_or_load(tmp_path / "cache.h5", teacher, data, "rgb", needs, batch_size=16,
                                              progress=False, stage_dtype="float16")
    assert cache.to("cpu") is cache and cache.device == torch.device("cpu")
    index = torch.tensor([7, 2, 2, len(data) - 1, 0, 7])
    out, expected = cache.lookup(index), former_lookup(cache, index)
    assert torch.equal(out.embedding, expected["embedding"]) and torch.equal(out.logits, expected["logits"])
    for stage in (1, 4):
        assert out.features[stage].dtype == torch.float32
        assert torch.equal(out.features[stage], expected[f"stage_{stage}"])


# --------------------------------------------------------------------------- on CUDA, where syncs cost
@contextlib.contextmanager
def cuda_syncs_raise() -> Iterator[None]:
    """Make every synchronising CUDA call raise while the block runs."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _on_cuda(steps):
    return [(EncoderOutput([], s.embedding.detach().cuda().requires_grad_()), EncoderOutput([], t.embedding.cuda()),
             i.cuda()) for s, t, i in steps]


@CUDA
@pytest.mark.parametrize("options", [{}, {"normalization": "ema"}, {"scoring": "gather"}],
                         ids=["first_batch", "ema", "gather"])
def test_crd_steps_on_cuda_do_not_synchronise(options):
    """On CUDA the steps make no synchronising call, and give the former code's banks and Z (same draws: the
    same seeded CUDA generator)."""
    crd, former = make_crd(**options).cuda(), make_crd(former=True, **options).cuda()
    steps = _on_cuda(batches(4))
    torch.cuda.synchronize()
    for student, teacher, index in steps:
        with cuda_syncs_raise():
            (0.8 * crd(student, teacher, index).loss).backward()
    for student, teacher, index in _on_cuda(batches(4)):
        (0.8 * former(student, teacher, index).loss).backward()
    # The same forward operations on the device (backward passes do not touch banks or Z): unit bank rows within
    # one evaluation's bound of each other at most (the mix's 2 roundings, the normalisation's d + 3), and Z, the
    # same float32 sum then float64 arithmetic on the device rather than in Python, within FLOAT64.
    for name in ("student_memory.rows", "teacher_memory.rows"):
        torch.testing.assert_close(crd.state_dict()[name], former.state_dict()[name], rtol=0, atol=gamma(2 + 8 + 3))
    for name in ("z_student", "z_teacher"):
        torch.testing.assert_close(crd.state_dict()[name], former.state_dict()[name], rtol=FLOAT64, atol=0)


@CUDA
def test_cache_lookup_on_cuda_stays_on_the_device(synthetic_file, tmp_path):
    cache = _cached_task(synthetic_file, tmp_path).teacher.cache
    index = torch.tensor([3, 1, 3, 0])
    expected = cache.lookup(index)
    on_device = index.cuda()
    cache.lookup(on_device)  # moves the arrays to the device
    assert cache.device.type == "cuda"
    torch.cuda.synchronize()
    with cuda_syncs_raise():
        out = cache.lookup(on_device)
    assert out.embedding.device.type == "cuda" and torch.equal(out.embedding.cpu(), expected.embedding)
    assert torch.equal(cache.lookup(index).embedding, expected.embedding)  # CPU indices are still served
