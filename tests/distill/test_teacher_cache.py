"""The teacher-feature cache: equals the teacher, is reused only while nothing it depends on changed."""
from __future__ import annotations

import os
import pickle
import types

import h5py
import pytest
import torch

from crossmodal.data.dataset import PairedDataset
from crossmodal.data.transforms import PairedTransform
from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.errors import ConfigError
from crossmodal.models import Encoder, FrozenTeacher, TeacherNeeds

NEEDS = TeacherNeeds(stages=frozenset({1, 4}), embedding=True, logits=True)


def make_teacher() -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(Encoder("test_resnet", in_chans=3, num_classes=10, small_input=True))


class CountingTeacher:
    """Counts the teacher's forward passes through a hook."""

    def __init__(self, teacher: FrozenTeacher) -> None:
        self.calls = 0
        teacher.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


@pytest.fixture()
def data(synthetic_file):
    return PairedDataset(synthetic_file, "train", modalities=["rgb", "depth"], labels=["label"])


def batched(teacher, data, indices, batch_size=16):
    """The teacher's outputs for ``indices`` as the cache computes them: over the data in order, in batches of
    ``batch_size`` (a convolution's rounding may depend on the batch it runs in; within one, the same bits)."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images = torch.stack([data[i]["rgb"] for i in range(start, min(start + batch_size, len(data)))])
            outputs.append(teacher(images))
    pick = lambda values: torch.cat(values)[indices]  # noqa: E731
    return types.SimpleNamespace(
        features=[None if outputs[0].features[s] is None else pick([o.features[s] for o in outputs])
                  for s in range(len(outputs[0].features))],
        embedding=pick([o.embedding for o in outputs]), logits=pick([o.logits for o in outputs]))


def build(path, teacher, data, needs=NEEDS, **kwargs) -> TeacherFeatureCache:
    return TeacherFeatureCache.build_or_load(path, teacher, data, "rgb", needs, batch_size=16, progress=False,
                                             **kwargs)


@pytest.mark.parametrize("memory_limit_bytes", [1 << 30, 0])
def test_lookup_equals_the_teacher(tmp_path, data, memory_limit_bytes):
    teacher = make_teacher()
    cache = build(tmp_path / "cache.h5", teacher, data, memory_limit_bytes=memory_limit_bytes)
    index = torch.tensor([7, 2, 2, len(data) - 1, 0])
    out = cache.lookup(index)
    expected = batched(teacher, data, index)
    assert len(out.features) == teacher.spec.num_stages and len(cache) == len(data)
    assert [s for s, f in enumerate(out.features) if f is not None] == [1, 4]
    for stage in (1, 4):  # stored as computed: the same bits
        assert torch.equal(out.features[stage], expected.features[stage])
    assert torch.equal(out.embedding, expected.embedding) and torch.equal(out.logits, expected.logits)
    assert out.embedding.dtype == torch.float32 and out.embedding.device == index.device
    restored = pickle.loads(pickle.dumps(cache))  # DataLoader workers / spawn: the file handle is not pickled
    assert torch.equal(restored.lookup(index).features[4], out.features[4])
    assert cache.lookup(torch.tensor([], dtype=torch.int64)).features[4].shape[0] == 0
    with pytest.raises(IndexError):
        cache.lookup(torch.tensor([len(data)]))


def test_float16_stages_within_half_precision(tmp_path, data):
    teacher = make_teacher()
    cache = build(tmp_path / "half.h5", teacher, data, stage_dtype="float16")
    with h5py.File(tmp_path / "half.h5") as handle:
        assert handle["stage_4"].dtype == "float16" and handle["embedding"].dtype == "float32"
    out = cache.lookup(torch.arange(4))
    expected = batched(teacher, data, torch.arange(4))
    assert out.features[4].dtype == torch.float32
    # float16 rounds to nearest: relatively within its unit roundoff 2**-11, or within half its smallest
    # subnormal step, 2**-25, below its normal range
    torch.testing.assert_close(out.features[4], expected.features[4], rtol=2.0 ** -11, atol=2.0 ** -25)


def test_second_call_reuses_and_changes_rebuild(tmp_path, data, capsys):
    path = tmp_path / "cache.h5"
    teacher = make_teacher()
    counter = CountingTeacher(teacher)
    build(path, teacher, data)
    built = counter.calls
    assert built == 3  # 38 training scenes in batches of 16
    build(path, teacher, data)
    build(path, teacher, data, needs=TeacherNeeds(stages=frozenset({4})))  # a subset is served as well
    assert counter.calls == built and "stale" not in capsys.readouterr().err

    build(path, teacher, data, needs=TeacherNeeds(stages=frozenset({2})))
    assert counter.calls == 2 * built and "lacks stage 2" in capsys.readouterr().err
    build(path, teacher, data)  # the rebuild kept stages 1 and 4 and the logits
    assert counter.calls == 2 * built

    with torch.no_grad():
        teacher.encoder.model.fc.bias[0] += 1.0
    cache = build(path, teacher, data)
    assert counter.calls == 3 * built and "(teacher changed)" in capsys.readouterr().err
    with torch.no_grad():  # through the encoder, on the cache's first batch: the counter counts the teacher only
        expected = teacher.encoder(torch.stack([data[i]["rgb"] for i in range(16)])).logits[3:4]
    assert torch.equal(cache.lookup(torch.tensor([3])).logits, expected)

    resized = PairedDataset(data.path, "train", modalities=["rgb"],
                            transform=PairedTransform((24, 24), train=False))
    cache = build(path, teacher, resized)
    assert counter.calls == 4 * built and "(transform changed)" in capsys.readouterr().err
    assert cache.lookup(torch.tensor([0])).features[4].shape[-1] == 3  # 24 px / reduction 8

    test_split = PairedDataset(data.path, "test", modalities=["rgb"])
    build(path, teacher, test_split)
    assert "(split, transform changed)" in capsys.readouterr().err
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary files left


def test_truncated_or_foreign_cache_is_rebuilt(tmp_path, data, capsys):
    path = tmp_path / "cache.h5"
    teacher = make_teacher()
    counter = CountingTeacher(teacher)
    reference = build(path, teacher, data).lookup(torch.arange(5))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    cache = build(path, teacher, data)
    assert counter.calls == 6 and "unreadable" in capsys.readouterr().err
    assert torch.equal(cache.lookup(torch.arange(5)).embedding, reference.embedding)  # rebuilt alike
    with h5py.File(path, "w") as handle:
        handle["embedding"] = torch.zeros(3, 2).numpy()
    build(path, teacher, data)
    assert counter.calls == 9 and "not a teacher cache" in capsys.readouterr().err


def test_augmenting_transform_and_bad_requests_are_refused(tmp_path, data, synthetic_file):
    teacher = make_teacher()
    augmented = PairedDataset(synthetic_file, "train", modalities=["rgb"], transform=PairedTransform((32, 32)))
    with pytest.raises(ConfigError, match="augments"):
        build(tmp_path / "cache.h5", teacher, augmented)
    with pytest.raises(ConfigError, match="out of range"):
        build(tmp_path / "cache.h5", teacher, data, needs=TeacherNeeds(stages=frozenset({5})))
    with pytest.raises(ConfigError, match="no modality 'lab_l'"):
        TeacherFeatureCache.build_or_load(tmp_path / "cache.h5", teacher, data, "lab_l", NEEDS, progress=False)
    headless = FrozenTeacher(Encoder("test_resnet", in_chans=3))
    with pytest.raises(ConfigError, match="no classifier"):
        build(tmp_path / "cache.h5", headless, data)
    assert not os.path.exists(tmp_path / "cache.h5")
