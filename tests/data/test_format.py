"""The paired HDF5 format: round trips through the writer and the validating reader, and every malformed case."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import error_line, run_cli
from crossmodal.checksums import row_crc32s
from crossmodal.data import integrity
from crossmodal.data.codecs import read_physical
from crossmodal.data.format import FORMAT_VERSION, read_layout
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.errors import DataError
from tolerance import gamma


def write_small(path, num=5, height=6, width=7, **kwargs):
    """A file with rgb, depth, a class set, a segmentation set and two splits; returns the arrays written."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (num, height, width, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 9.0, (num, height, width, 1)).astype(np.float32)
    seg = rng.integers(0, 4, (num, height, width)).astype(np.uint8)
    seg[:, 0, 0] = 255
    labels = np.array([0, 1, 2, -1, 1][:num])
    with PairedWriter(path, num, source="unit test", converter="tests", options={"k": 1}, **kwargs) as writer:
        writer.add_modality("rgb", height, width, 3, np.uint8, kind="rgb", units="sRGB 0-255")
        writer.add_modality("depth", height, width, 1, np.float32, kind="depth", units="m")
        writer.add_segmentation("seg", height, width, ["a", "b", "c", "d"])
        writer.write_batch(0, rgb=rgb[:2], depth=depth[:2], seg=seg[:2])
        for row in range(2, num):
            writer.write(row, rgb=rgb[row], depth=depth[row, ..., 0], seg=seg[row])
        writer.add_class_labels("label", labels, ["x", "y", "z"])
        writer.add_split("train", [0, 1, 2])
        writer.add_split("test", [3, 4][: num - 3])
    return {"rgb": rgb, "depth": depth, "seg": seg, "label": labels}


def test_round_trip_layout_and_values(tmp_path):
    path = tmp_path / "small.h5"
    arrays = write_small(path)
    layout = read_layout(path)
    assert layout.format_version == FORMAT_VERSION and layout.num_samples == 5
    assert layout.modalities["rgb"].shape == (5, 6, 7, 3) and layout.modalities["depth"].units == "m"
    # stored as millimetres: half a millimetre of quantisation, plus three float32 roundings of at most max|d| (the
    # product d x 1000 before rounding to an integer, float32(0.001) and n x 0.001 when read)
    quantised = 5e-4 + gamma(3) * float(np.abs(arrays["depth"]).max())
    assert layout.modalities["depth"].value_range == pytest.approx(
        (arrays["depth"].min(), arrays["depth"].max()), rel=0, abs=quantised)
    depth = layout.modalities["depth"]
    assert depth.dtype == np.uint16 and depth.scale == 0.001 and depth.clipped == 0 and depth.nonfinite == 0
    assert depth.codec == "blosc lz4+shuffle level 5" and depth.checksum
    assert layout.labels["seg"].type == "segmentation" and layout.labels["seg"].ignore_index == 255
    assert layout.labels["label"].class_names == ("x", "y", "z")
    assert layout.splits == {"train": 3, "test": 2}
    assert layout.provenance["converter"] == "tests" and layout.provenance["options"] == {
        "k": 1, "compression": "blosc-lz4", "depth_storage": "uint16"}
    with h5py.File(path, "r") as handle:
        rgb = handle["modalities/rgb"]
        assert rgb.chunks == (1, 6, 7, 3) and rgb.fletcher32
        np.testing.assert_array_equal(rgb[()], arrays["rgb"])
        np.testing.assert_array_equal(handle["modalities/depth"][()], np.rint(arrays["depth"] * 1000))
        np.testing.assert_allclose(read_physical(handle["modalities/depth"]), arrays["depth"], rtol=0, atol=quantised)
        np.testing.assert_array_equal(handle["labels/seg"][()], arrays["seg"])
        np.testing.assert_array_equal(handle["labels/label"][()], arrays["label"])


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with PairedWriter(path, 3, source="s", converter="c") as writer:
            writer.add_modality("rgb", 2, 2, 3, np.uint8, kind="rgb", units="")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    path = tmp_path / "out.h5"
    write_small(path)
    with pytest.raises(DataError, match="already exists"):
        write_small(path)
    write_small(path, overwrite=True)
    assert read_layout(path).num_samples == 5


def _mutate(path, action):
    with h5py.File(path, "a") as handle:
        action(handle)


def _replace(handle, name, data):
    """Replace a dataset, with row CRC-32s that match it: a malformed file, not a damaged one."""
    attrs = dict(handle[name].attrs)
    del handle[name]
    handle[name] = data
    handle[name].attrs.update(attrs)
    integrity.store_row_crcs(handle, name, row_crc32s(np.asarray(data)))


MALFORMED = {
    "unknown format version": lambda h: h.attrs.__setitem__("format_version", 99),
    "not a crossmodal-paired file": lambda h: h.attrs.__setitem__("format", "other"),
    "has 4 samples, the file has 5": lambda h: _replace(h, "modalities/depth", np.zeros((4, 6, 7, 1), np.float32)),
    "split 'train' has an index out of range": lambda h: _replace(h, "splits/train", np.array([0, 5])),
    "has dtype int64": lambda h: _replace(h, "modalities/depth", np.zeros((5, 6, 7, 1), np.int64)),
    "label set 'label' has 3 samples": lambda h: _replace(h, "labels/label", np.zeros(3, np.int64)),
    "class id out of range": lambda h: _replace(h, "labels/label", np.array([0, 1, 2, 3, 0])),
    "lacks the attribute 'num_classes'": lambda h: h["labels/seg"].attrs.__delitem__("num_classes"),
    "lists a sample more than once": lambda h: _replace(h, "splits/test", np.array([3, 3])),
    "must share one height x width": lambda h: _replace(h, "modalities/depth", np.zeros((5, 6, 6, 1), np.float32)),
    "stores no modality": lambda h: [h["modalities"].__delitem__(n) for n in list(h["modalities"])],
}


@pytest.mark.parametrize("problem", sorted(MALFORMED))
def test_malformed_file_is_one_line_error(tmp_path, problem):
    path = tmp_path / "bad.h5"
    write_small(path)
    _mutate(path, MALFORMED[problem])
    with pytest.raises(DataError, match=problem.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_layout(path)
    assert str(path) in str(caught.value)
    line = error_line(run_cli("inspect", path))
    assert str(path) in line and problem in line


def test_not_hdf5_truncated_and_missing(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    assert "not a readable HDF5 file" in error_line(run_cli("inspect", text))
    good = tmp_path / "good.h5"
    write_small(good, num=5, height=64, width=64)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = error_line(run_cli("inspect", truncated))
    assert str(truncated) in line
    assert "no such file" in error_line(run_cli("inspect", tmp_path / "absent.h5"))


def test_segmentation_value_beyond_classes_is_reported(tmp_path):
    path = tmp_path / "bad_seg.h5"
    write_small(path)
    _mutate(path, lambda h: h["labels/seg"].__setitem__((2, 1, 1), 9))
    line = error_line(run_cli("inspect", path))
    assert "label set 'seg' row 2 has class id 9 >= num_classes 4" in line


def test_uncompressed_files_read_the_same(tmp_path):
    arrays = write_small(tmp_path / "plain.h5", compression="none")
    with h5py.File(tmp_path / "plain.h5", "r") as handle:
        assert handle["modalities/rgb"].compression is None and handle["modalities/rgb"].chunks == (1, 6, 7, 3)
        np.testing.assert_array_equal(handle["modalities/rgb"][()], arrays["rgb"])
    assert read_layout(tmp_path / "plain.h5").provenance["options"]["compression"] == "none"
    with pytest.raises(DataError, match="unknown compression 'zstd'"):
        write_small(tmp_path / "other.h5", compression="zstd")
