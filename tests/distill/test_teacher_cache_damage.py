"""A damaged teacher cache is never used: it is rebuilt with one line on stderr, or refused as one DataError.

The fault (issue 16, item 5): zeroing 20 KB inside RUN/teacher_cache.h5 and resuming trained on the zeros with
no warning; only a truncated file was noticed.
"""
from __future__ import annotations

import h5py
import pytest
import torch

from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.errors import DataError
from test_teacher_cache import NEEDS, CountingTeacher, data, make_teacher  # noqa: F401  (data: a fixture)

DAMAGE_BYTES = 20_000


def build(path, teacher, data, **kwargs) -> TeacherFeatureCache:
    return TeacherFeatureCache.build_or_load(path, teacher, data, "rgb", NEEDS, batch_size=16, progress=False,
                                             **kwargs)


def everything(cache: TeacherFeatureCache) -> dict[str, torch.Tensor]:
    out = cache.lookup(torch.arange(len(cache)))
    return {"embedding": out.embedding, "logits": out.logits, "stage_1": out.features[1],
            "stage_4": out.features[4]}


def zero_inside(path, name: str, row: int = 0, skip: int = 512, length: int = DAMAGE_BYTES,
                whole_chunks: int = 0) -> None:
    """Write ``length`` zero bytes into the file from ``skip`` bytes inside the chunk holding ``row`` of ``name``;
    with ``whole_chunks``, zero exactly that many whole chunks (each with its stored Fletcher-32 checksum, which
    an all-zero chunk then matches) from that chunk on."""
    with h5py.File(path, "r") as handle:
        dataset = handle[name]
        first = row - row % dataset.chunks[0]
        infos = [dataset.id.get_chunk_info_by_coord((first + i * dataset.chunks[0],) + (0,) * (dataset.ndim - 1))
                 for i in range(max(1, whole_chunks))]
        info = infos[0]
        if whole_chunks:
            assert all(b.byte_offset == a.byte_offset + a.size for a, b in zip(infos, infos[1:]))
            skip, length = 0, sum(i.size for i in infos)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + skip)
        assert any(handle.read(length)), "the damage must change the file"
        handle.seek(info.byte_offset + skip)
        handle.write(bytes(length))


@pytest.mark.parametrize("name, damage", [
    ("stage_1", {}),  # 20 KB inside one 128 KB chunk: its Fletcher-32 checksum fails on the read
    ("stage_4", {}),  # 20 KB over several 6 KB chunks, the first one partly
    ("stage_4", {"whole_chunks": 3}),  # 18 KB, whole chunks: Fletcher-32 passes, the array's CRC-32 does not
    ("embedding", {"skip": 64, "length": 14_000}),  # inside its one 14.6 KB chunk
], ids=["stage_1", "stage_4", "stage_4-whole-chunks", "embedding"])
def test_zeroed_cache_is_rebuilt_with_one_line(tmp_path, data, capsys, name, damage):
    path = tmp_path / "teacher_cache.h5"
    teacher = make_teacher()
    counter = CountingTeacher(teacher)
    fresh = everything(build(path, teacher, data))
    built = counter.calls
    zero_inside(path, name, **damage)
    if damage.get("whole_chunks"):  # invisible to Fletcher-32: all-zero chunks match their zeroed sums
        with h5py.File(path, "r") as handle:
            assert not handle[name][()][:damage["whole_chunks"]].any()
    capsys.readouterr()

    cache = build(path, teacher, data)  # a resume: the damaged file is found, never used

    err = capsys.readouterr().err
    assert counter.calls == 2 * built, "the damaged cache was used instead of rebuilt"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"teacher cache {path} is stale (damaged: '{name}' fails its checksum), " \
                                          f"rebuilding", err
    for key, value in everything(cache).items():
        torch.testing.assert_close(value, fresh[key], atol=0, rtol=0)
    build(path, teacher, data)  # the rebuilt file passes
    assert counter.calls == 2 * built and capsys.readouterr().err == ""


def test_damage_met_by_a_file_backed_cache_is_one_data_error(tmp_path, data):
    path = tmp_path / "teacher_cache.h5"
    teacher = make_teacher()
    fresh = everything(build(path, teacher, data))
    cache = build(path, teacher, data, memory_limit_bytes=0)  # read per lookup, as a cache over 1 GiB is
    zero_inside(path, "stage_1", row=5, length=4096)  # damaged while the run uses it

    with pytest.raises(DataError) as caught:
        cache.lookup(torch.tensor([3, 5, 7]))
    message = str(caught.value)
    assert "\n" not in message and caught.value.path == str(path)
    assert message == f"{path}: the teacher cache is damaged ('stage_1' fails its checksum); delete it to " \
                      f"rebuild it"
    out = cache.lookup(torch.tensor([3, 7]))  # the rows in intact chunks still read
    torch.testing.assert_close(out.features[1], fresh["stage_1"][[3, 7]], atol=0, rtol=0)


def test_cache_written_without_checksums_is_rebuilt_once(tmp_path, data, capsys):
    path = tmp_path / "teacher_cache.h5"
    teacher = make_teacher()
    counter = CountingTeacher(teacher)
    fresh = everything(build(path, teacher, data))
    built = counter.calls
    old = tmp_path / "old.h5"  # the same cache as the code before checksums wrote it: no fletcher32, no crc32
    with h5py.File(path, "r") as source, h5py.File(old, "w") as target:
        target.attrs.update(source.attrs)
        for name, dataset in source.items():
            target.create_dataset(name, data=dataset[()], chunks=dataset.chunks)
    old.replace(path)
    capsys.readouterr()

    cache = build(path, teacher, data)
    assert counter.calls == 2 * built
    assert capsys.readouterr().err == f"teacher cache {path} is stale (written without checksums), rebuilding\n"
    for key, value in everything(cache).items():
        torch.testing.assert_close(value, fresh[key], atol=0, rtol=0)
    build(path, teacher, data)
    assert counter.calls == 2 * built and capsys.readouterr().err == ""
