"""Row CRC-32s: a chunk zeroed whole (its Fletcher-32 sum too, which zeros match) is caught on every read path,
as one line naming the file, the dataset and the row; files written without CRC-32s still read."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from conftest import ROOT, cli, error_line
from crossmodal.checksums import crc32, row_crc32s
from crossmodal.data import integrity
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import read_layout
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep import repack
from crossmodal.errors import DataError

MISMATCH = ("checksum mismatch (the stored data is damaged, or was edited without refreshing its row CRC-32s: "
            "docs/format.md)")
SMOKE_TEACHER = ROOT / "experiments" / "configs" / "smoke_teacher.yaml"


def zero_chunk(path, dataset, row):
    """Zero the whole chunk holding ``row``, stored Fletcher-32 sum included: what a hole or bad block leaves."""
    with h5py.File(path, "r") as handle:
        dset = handle[dataset]
        info = dset.id.get_chunk_info_by_coord((row - row % dset.chunks[0],) + (0,) * (dset.ndim - 1))
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\0" * info.size)


@pytest.fixture
def copy(tmp_path, synthetic_file):
    def make(name="data.h5"):
        path = tmp_path / name
        shutil.copy(synthetic_file, path)
        return path
    return make


def uncompressed(path_in, path_out):
    repack.convert(str(path_in), str(path_out), compression="none")
    return path_out


def test_fletcher32_alone_passes_a_zeroed_chunk(copy):
    """Why the CRC-32s exist: without them, the zeroed labels read as class 0 everywhere, silently."""
    path = copy()
    zero_chunk(path, "labels/label", 0)
    with h5py.File(path, "r") as handle:
        assert handle["labels/label"].fletcher32 and not handle["labels/label"][()].any()


def test_a_zeroed_chunk_of_class_labels_is_one_line_from_reader_inspect_and_train_teacher(copy, synthetic_file):
    path = copy()
    with h5py.File(synthetic_file, "r") as handle:
        first = int(np.flatnonzero(handle["labels/label"][()] != 0)[0])  # rows of class 0 are unchanged by zeros
    zero_chunk(path, "labels/label", 0)
    line = f"{path}: labels/label row {first}: {MISMATCH}"
    with pytest.raises(DataError) as error:
        PairedDataset(path, "train", modalities=["rgb"], labels=["label"])
    assert str(error.value) == line

    result = cli("inspect", path, "--verify")
    assert result.returncode == 2
    assert error_line(result).startswith(f"crossmodal inspect: error: {line} (and ")
    assert f"verify: labels/label: damaged rows {first}," in result.stdout
    assert "(no finite values)" not in result.stdout  # the intact modalities were not read, not found all NaN
    assert "rgb        (48, 32, 32, 3) uint8 (not examined)" in result.stdout

    result = cli("train-teacher", SMOKE_TEACHER, "--out", path.parent / "run", f"data.path={path}",
                 "train.batch_size=8", "train.epochs=1", "train.progress=false", "task.segmentation=null",
                 "data.augment=false")
    assert error_line(result) == f"crossmodal train-teacher: error: {line}"
    assert not (path.parent / "run").exists()


def test_a_zeroed_split_is_one_line_not_a_duplicated_sample(copy, synthetic_file):
    path = copy()
    zero_chunk(path, "splits/train", 0)
    with pytest.raises(DataError) as error:
        read_layout(path)
    assert str(error.value) == f"{path}: splits/train row 1: {MISMATCH}"  # row 0 holds index 0 either way
    result = cli("inspect", path, "--verify")
    assert error_line(result).startswith(f"crossmodal inspect: error: {path}: splits/train row 1: {MISMATCH}")


@pytest.mark.parametrize("dataset, row", [("modalities/rgb", 5), ("modalities/depth", 0), ("labels/label", 0)])
def test_a_zeroed_chunk_of_an_uncompressed_file_is_one_line_naming_its_row(tmp_path, synthetic_file, dataset, row):
    path = uncompressed(synthetic_file, tmp_path / "plain.h5")
    with h5py.File(path, "r") as handle:
        assert integrity.has_row_crcs(handle) and handle[dataset].compression is None
        expected_row = row if dataset.startswith("modalities") else \
            int(np.flatnonzero(handle[dataset][()] != 0)[0])
    zero_chunk(path, dataset, row)
    line = f"{path}: {dataset} row {expected_row}: {MISMATCH}"
    result = cli("inspect", path, "--verify")
    assert result.returncode == 2 and error_line(result).startswith(f"crossmodal inspect: error: {line}")
    if dataset.startswith("modalities"):
        assert error_line(result) == f"crossmodal inspect: error: {line}"  # one chunk per row
        assert f"verify: {dataset}: damaged rows {row}: {MISMATCH}" in result.stdout
        data = PairedDataset(path, None, modalities=["rgb", "depth"])
        data[row + 1]  # the other rows still read
        with pytest.raises(DataError) as error:
            data.__getitems__([row + 1, row])  # a whole batch, as a DataLoader asks for it
        assert str(error.value) == line
        if row == 5:  # and from a loader worker process, still one line
            from torch.utils.data import DataLoader

            from crossmodal.data.dataset import collate
            batches = iter(DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate))
            with pytest.raises(DataError) as error:
                list(batches)
            batches._shutdown_workers()  # now: left to the garbage collector, it waits 10 s for the workers
            assert str(error.value) == line


def test_the_device_resident_loader_checks_the_rows_it_loads(tmp_path, synthetic_file):
    from crossmodal.data.device import DeviceResidentData

    path = uncompressed(synthetic_file, tmp_path / "plain.h5")
    data = PairedDataset(path, None, modalities=["rgb", "depth"])
    zero_chunk(path, "modalities/depth", 7)
    with pytest.raises(DataError) as error:
        DeviceResidentData(data, "cpu")
    assert str(error.value) == f"{path}: modalities/depth row 7: {MISMATCH}"


def test_repack_refuses_a_damaged_source_and_writes_nothing(tmp_path, synthetic_file):
    source = uncompressed(synthetic_file, tmp_path / "plain.h5")
    zero_chunk(source, "modalities/rgb", 3)
    with pytest.raises(DataError) as error:
        repack.convert(str(source), str(tmp_path / "out.h5"))
    assert str(error.value) == f"{source}: modalities/rgb row 3: {MISMATCH}; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.h5"]


def test_repack_writes_row_crcs_that_verify(tmp_path, synthetic_file):
    out = uncompressed(synthetic_file, tmp_path / "plain.h5")
    result = cli("inspect", out, "--verify")
    assert result.returncode == 0 and "chunks read back intact" in result.stdout
    assert "format version 2, a CRC-32 per row, 48 samples" in result.stdout
    with h5py.File(out, "r") as handle:
        for key in integrity.dataset_keys(handle):
            assert np.array_equal(handle[integrity.crc_key(key)][()], row_crc32s(handle[key][()])), key


def without_crcs(path):
    """The file as crossmodal wrote it before row CRC-32s existed."""
    with h5py.File(path, "a") as handle:
        del handle[integrity.GROUP]
        del handle.attrs[integrity.ROOT_ATTR]
    return path


def test_a_file_written_before_row_crcs_still_reads_and_verifies(copy):
    path = without_crcs(copy())
    assert not read_layout(path).row_crc32
    data = PairedDataset(path, "train", modalities=["rgb", "depth"], labels=["label"])
    assert len(data) == 38 and data[0]["rgb"].shape == (3, 32, 32)
    result = cli("inspect", path, "--verify")
    assert result.returncode == 0 and "read back intact" in result.stdout
    assert "format version 2, no row CRC-32s (repack adds them), 48 samples" in result.stdout


def test_damaged_or_missing_row_crcs_are_one_line(copy):
    path = copy()
    with h5py.File(path, "a") as handle:
        del handle["crc32/modalities/rgb"]
    with pytest.raises(DataError, match="crc32/modalities/rgb is missing or of the wrong length"):
        read_layout(path)
    path = copy("zeroed.h5")
    zero_chunk(path, "crc32/modalities/depth", 0)
    with pytest.raises(DataError) as error:
        PairedDataset(path, "train", modalities=["depth"])[0]
    assert str(error.value) == f"{path}: crc32/modalities/depth: {MISMATCH}"


def test_the_writer_stores_a_crc_for_rows_never_written_and_for_the_bytes_hdf5_stores(tmp_path):
    path = tmp_path / "w.h5"
    with PairedWriter(path, 3, source="t", converter="tests", compression="none") as writer:
        writer.add_modality("gray", 2, 2, 1, np.uint8, kind="gray", units="0-255")
        writer.add_segmentation("seg", 2, 2, ["a", "b"])
        writer.write(0, gray=np.full((2, 2), 300), seg=np.ones((2, 2), np.int64))  # int64, out of uint8 range
        writer.add_split("train", [0, 1, 2])
    with h5py.File(path, "r") as handle:
        assert handle["modalities/gray"][0].max() == 255  # clipped, as HDF5 converts
        for key in ("modalities/gray", "labels/seg"):
            assert np.array_equal(handle[f"crc32/{key}"][()], row_crc32s(handle[key][()]))
    data = PairedDataset(path, "train", modalities=["gray"], labels=["seg"])
    assert [int(data[i]["seg"][0, 0]) for i in range(3)] == [1, 255, 255]  # unwritten rows: void


@pytest.mark.parametrize("array", [np.arange(-20, 40, dtype=np.int64),  # labels, split indices: by columns
                                   np.random.default_rng(0).random((5, 3, 7)).astype(np.float32),  # 84 B: by rows
                                   np.arange(24, dtype=np.uint16).reshape(4, 3, 2)[:, ::2],  # not contiguous
                                   np.zeros((3, 0)), np.zeros((0, 3))])
def test_row_crc32s_are_zlibs_crc32_of_each_row(array):
    import zlib

    assert row_crc32s(array).tolist() == [zlib.crc32(np.ascontiguousarray(row).tobytes()) for row in array]
    assert [crc32(row) for row in array] == row_crc32s(array).tolist()


def test_the_reader_computes_a_crc_for_rows_of_zeros_only():
    """The sample reader's CRC-32 is for what Fletcher-32 cannot vouch for: a row of zeros (a chunk zeroed whole),
    looked at in its first 4 KiB, then whole; a zero past the first 4 KiB is no such row."""
    from crossmodal.data.integrity import all_zero

    assert all_zero(np.zeros((480, 640, 3), np.uint8)) and all_zero(np.zeros((4, 4), np.float32)[:, ::2])
    late = np.zeros((480, 640, 1), np.uint16)
    late[-1, -1] = 1
    assert not all_zero(late) and not all_zero(np.ones((2, 2), np.uint8))
