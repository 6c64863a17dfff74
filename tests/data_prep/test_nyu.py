"""NYU-Depth V2 converter on fixtures in the official file's exact layout (MATLAB v7.3 = HDF5, column-major)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from conftest import error_line, run_cli
from crossmodal.data.codecs import read_physical
from crossmodal.data.format import read_layout
from crossmodal.data_prep.nyu import convert
from tolerance import gamma

SCENES = ["kitchen", "bedroom", "office"]


def picture(index: int, height: int, width: int) -> np.ndarray:
    """An asymmetric (H, W, 3) frame: a transpose or a frame off by one changes it."""
    y, x, c = np.mgrid[0:height, 0:width, 0:3]
    return ((7 * y + 3 * x + 50 * c + 11 * index) % 251).astype(np.uint8)


def write_mat(path, num: int, height: int, width: int, with_scenes: bool = True) -> dict[str, np.ndarray]:
    """A fake nyu_depth_v2_labeled.mat: what h5py sees of the real one, scaled down. Returns the frames (H, W)."""
    rng = np.random.default_rng(0)
    rgb = np.stack([picture(i, height, width) for i in range(num)])
    depth = rng.uniform(0.5, 9.5, (num, height, width)).astype(np.float32)
    raw = np.where(rng.random((num, height, width)) < 0.1, 0, depth).astype(np.float32)
    labels = rng.integers(0, 895, (num, height, width)).astype(np.uint16)
    with h5py.File(path, "w", userblock_size=512) as handle:
        # MATLAB stores column-major: h5py sees every frame transposed
        handle["images"] = rgb.transpose(0, 3, 2, 1)
        handle["depths"] = depth.transpose(0, 2, 1)
        handle["rawDepths"] = raw.transpose(0, 2, 1)
        handle["labels"] = labels.transpose(0, 2, 1)
        handle["instances"] = np.zeros((num, width, height), np.uint8)
        refs = handle.create_group("#refs#")
        if with_scenes:
            scene_refs = []
            for index in range(num):
                text = SCENES[index % len(SCENES)]
                refs[f"s{index}"] = np.array([[ord(ch)] for ch in text], np.uint16)  # MATLAB char: (len, 1)
                refs[f"s{index}"].attrs["MATLAB_class"] = np.bytes_("char")
                scene_refs.append(refs[f"s{index}"].ref)
            handle.create_dataset("sceneTypes", data=np.array([scene_refs], dtype=h5py.ref_dtype))
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fixture HDF5 schema 1.00 .")
    return {"rgb": rgb, "depth": depth, "raw": raw, "labels": labels}


def write_meta(folder, num: int) -> dict[str, np.ndarray]:
    """Metadata in the layout of the public nyuv2-meta-data files, with a split of ``num`` frames."""
    folder.mkdir(exist_ok=True)
    train = np.arange(1, num + 1, 2).reshape(-1, 1).astype(np.uint16)  # 1-based, odd frames
    test = np.arange(2, num + 1, 2).reshape(-1, 1).astype(np.uint16)
    scipy.io.savemat(folder / "splits.mat", {"trainNdxs": train, "testNdxs": test})
    map_class = ((np.arange(894) % 40) + 1).reshape(1, -1).astype(np.uint8)
    names40 = np.array([[f"c40_{i}" for i in range(40)]], dtype=object)
    scipy.io.savemat(folder / "classMapping40.mat", {"mapClass": map_class, "className": names40})
    labels13 = ((np.arange(40) % 13) + 1).reshape(1, -1).astype(np.uint8)
    names13 = np.array([[f"c13_{i}" for i in range(13)]], dtype=object)
    scipy.io.savemat(folder / "class13Mapping.mat", {"classMapping13": {"labels13": labels13, "classNames": names13}})
    return {"train": train.ravel() - 1, "test": test.ravel() - 1, "map40": map_class.ravel(), "map13": labels13.ravel()}


def test_fixture_round_trip(tmp_path):
    frames = write_mat(tmp_path / "nyu.mat", num=5, height=6, width=8)
    meta = write_meta(tmp_path / "meta", num=5)
    out = tmp_path / "nyu.h5"
    convert(str(tmp_path / "nyu.mat"), str(tmp_path / "meta"), str(out))
    layout = read_layout(out)
    assert layout.modalities["rgb"].shape == (5, 6, 8, 3)
    assert layout.splits == {"train": 3, "test": 2}
    assert layout.labels["scene"].class_names == tuple(sorted(SCENES))
    with h5py.File(out, "r") as handle:
        np.testing.assert_array_equal(handle["modalities/rgb"][()], frames["rgb"])
        for name, key in (("depth", "depth"), ("raw_depth", "raw")):
            # stored as millimetres: half a millimetre of quantisation, plus three float32 roundings of at most
            # max|d| (d x 1000 before rounding, float32(0.001), n x 0.001 when read)
            quantised = 5e-4 + gamma(3) * float(np.abs(frames[key]).max())
            np.testing.assert_allclose(read_physical(handle[f"modalities/{name}"])[..., 0], frames[key], rtol=0,
                                       atol=quantised)
        np.testing.assert_array_equal(handle["splits/train"][()], meta["train"])
        np.testing.assert_array_equal(handle["splits/test"][()], meta["test"])
        raw = frames["labels"].astype(np.int64)
        expected40 = np.where(raw == 0, 255, meta["map40"][np.maximum(raw - 1, 0)] - 1)
        expected13 = np.where(raw == 0, 255, meta["map13"][np.maximum(expected40, 0) % 40] - 1)
        np.testing.assert_array_equal(handle["labels/seg40"][()], expected40)
        np.testing.assert_array_equal(handle["labels/seg13"][()], expected13)
        scenes = [layout.labels["scene"].class_names[v] for v in handle["labels/scene"][()]]
        assert scenes == [SCENES[i % 3] for i in range(5)]


def test_real_metadata_on_a_full_size_fixture(tmp_path, shared_data):
    """1,449 tiny frames with the real split and class maps: 795 / 654 frames, 894 -> 40 -> 13 by hand."""
    frames = write_mat(tmp_path / "nyu.mat", num=1449, height=4, width=5, with_scenes=False)
    labels = frames["labels"]
    labels[0, 0, :4] = [0, 3, 1, 894]  # void, raw 3, raw 1, the last raw id
    with h5py.File(tmp_path / "nyu.mat", "r+") as handle:
        handle["labels"][0] = labels[0].T
    result = run_cli("prepare", "nyu", "--mat", tmp_path / "nyu.mat", "--meta", shared_data / "nyu_meta",
                     "--out", tmp_path / "nyu.h5", "--size", 8, 10)
    assert result.returncode == 0, result.stderr
    layout = read_layout(tmp_path / "nyu.h5")
    assert layout.splits == {"train": 795, "test": 654}
    assert layout.modalities["rgb"].shape == (1449, 8, 10, 3)
    assert layout.labels["seg40"].class_names[:3] == ("wall", "floor", "cabinet")
    assert layout.labels["seg13"].class_names[5] == "furniture"
    with h5py.File(tmp_path / "nyu.h5", "r") as handle:
        assert handle["splits/test"][:3].tolist() == [0, 1, 8]  # the first test frames are 1, 2, 9 (1-based)
        # raw 3 is 'cabinet' (40-class id 2), part of 'furniture' (13-class id 5); raw 1 maps to 40 'otherprop'
        # (id 39) and to 13 'objects' (id 6), as does raw 894; nearest-neighbour 2x upscaling keeps each value
        assert handle["labels/seg40"][0, 0, [0, 2, 4, 6]].tolist() == [255, 2, 39, 39]
        assert handle["labels/seg13"][0, 0, [0, 2, 4]].tolist() == [255, 5, 6]


@pytest.mark.parametrize("case", ["missing images", "not hdf5", "split beyond frames", "missing meta file"])
def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, case):
    mat, meta, out = tmp_path / "nyu.mat", tmp_path / "meta", tmp_path / "out.h5"
    write_mat(mat, num=4, height=3, width=4)
    write_meta(meta, num=4)
    expected = {"missing images": "missing dataset(s) ['images']", "not hdf5": "not a MATLAB v7.3",
                "split beyond frames": "train indices exceed the 4 frames",
                "missing meta file": "classMapping40.mat: no such file"}[case]
    if case == "missing images":
        with h5py.File(mat, "r+") as handle:
            del handle["images"]
    elif case == "not hdf5":
        mat.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    elif case == "split beyond frames":
        write_meta(meta, num=9)
    else:
        (meta / "classMapping40.mat").unlink()
    line = error_line(run_cli("prepare", "nyu", "--mat", mat, "--meta", meta, "--out", out))
    assert expected in line
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".out.h5*")) == []
