"""What `prepare pairs` tells a user about data that looks wrong: depth in an implausible unit, how label values
became class names, NaN depth made holes; and `--size` on samples of another size."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from conftest import cli, error_line
from crossmodal.data.codecs import read_physical
from crossmodal.data.format import read_layout

MM = "millimetres (NYU's, ScanNet's and most Kinect and RealSense PNGs)"


def warnings_of(result):
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if "warning:" in line]


def test_real_nyu_millimetres_read_as_tum_units_are_warned_about(tmp_path, shared_data):
    """The README's old recipe: NYU's millimetre PNGs with --depth-scale 0.0002 store 0.18-1.99 m."""
    src = shared_data / "nyu_mini" / "index.csv"
    wrong = cli("prepare", "pairs", "--src", src, "--out", tmp_path / "wrong.h5", "--size", 60, 80,
                "--depth-scale", 0.0002)
    assert warnings_of(wrong) == [
        f"crossmodal prepare: warning: {src}: depth median 0.53 m after --depth-scale 0.0002 looks too near for "
        f"indoor scenes (1-8 m); as {MM} it would be 2.65 m (--depth-scale 0.001)"]
    assert read_layout(tmp_path / "wrong.h5").modalities["depth"].value_range[1] < 2.0  # a warning, not a refusal
    for extra in ([], ["--depth-scale", 0.001]):  # the right unit, by default or given: silent
        assert warnings_of(cli("prepare", "pairs", "--src", src, "--out", tmp_path / f"right{len(extra)}.h5",
                               "--size", 60, 80, *extra)) == []


def depth_folder(folder, depth, holes=0.0):
    """Two pairs of 8 x 10 pixels: a grey picture and ``depth`` (any dtype) with a share ``holes`` of zeros."""
    folder.mkdir()
    for k in range(2):
        frame = np.full((8, 10), depth, dtype=np.asarray(depth).dtype)
        frame.reshape(-1)[: int(round(holes * frame.size))] = 0
        cv2.imwrite(str(folder / f"{k}_rgb.png"), np.full((8, 10, 3), 90, np.uint8))
        cv2.imwrite(str(folder / f"{k}_depth.{'tiff' if frame.dtype.kind == 'f' else 'png'}"), frame)
    return folder


@pytest.mark.parametrize("stored, scale, expected", [
    (np.uint16(2650), 0.0002, "0.53 m after --depth-scale 0.0002 looks too near for indoor scenes (1-8 m); "
                              f"as {MM} it would be 2.65 m (--depth-scale 0.001)"),
    (np.uint16(12500), None, "12.50 m after the default --depth-scale 0.001 looks too far for indoor scenes "
                             "(1-8 m); as 1/5000 m (TUM RGB-D's PNGs) it would be 2.50 m (--depth-scale 0.0002)"),
    (np.uint16(20000), None, "20.00 m after the default --depth-scale 0.001 looks too far for indoor scenes "
                             "(1-8 m); as 1/8 mm (SUN RGB-D's bit-shifted PNGs) it would be 2.50 m "
                             "(--depth-scale 0.000125)"),
    (np.float32(2500.0), 1, f"2500.00 m after --depth-scale 1 looks too far for indoor scenes (1-8 m); as {MM} "
                            f"it would be 2.50 m (--depth-scale 0.001)"),
    (np.uint16(100), 0.001, "0.10 m after --depth-scale 0.001 looks too near for indoor scenes (1-8 m); check "
                            "--depth-scale (metres per stored unit)"),
], ids=["nyu mm as tum", "tum as mm", "sun rgb-d as mm", "float mm as m", "no unit fits"])
def test_implausible_depth_names_the_unit_that_fits(tmp_path, stored, scale, expected):
    src = depth_folder(tmp_path / "pairs", stored, holes=0.3)
    result = cli("prepare", "pairs", "--src", src, "--out", tmp_path / "p.h5",
                 *(["--depth-scale", scale] if scale is not None else []))
    assert warnings_of(result) == [f"crossmodal prepare: warning: {src}: depth median {expected}"]
    assert (tmp_path / "p.h5").is_file()


def test_plausible_depth_with_many_holes_is_silent(tmp_path):
    """Holes (0) are no distance: 70 % of them do not drag a 2.5 m median below 1 m."""
    src = depth_folder(tmp_path / "pairs", np.uint16(2500), holes=0.7)
    assert warnings_of(cli("prepare", "pairs", "--src", src, "--out", tmp_path / "p.h5")) == []


@pytest.mark.parametrize("scale", ["0", "-0.001", "nan", "inf"])
def test_a_depth_scale_that_is_no_unit_is_refused(tmp_path, scale):
    """0 would store every pixel as a hole, a negative scale clip them all: neither is a unit."""
    src = depth_folder(tmp_path / "pairs", np.uint16(2500))
    line = error_line(cli("prepare", "pairs", "--src", src, "--out", tmp_path / "p.h5", "--depth-scale", scale))
    assert line == (f"crossmodal prepare: error: --depth-scale: must be a positive number of metres per stored "
                    f"unit, got {float(scale)}")
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.h5*"))


def label_folder(folder, values):
    folder.mkdir()
    cv2.imwrite(str(folder / "a_rgb.png"), np.zeros((2, len(values), 3), np.uint8))
    cv2.imwrite(str(folder / "a_label.png"), np.array([values] * 2, np.uint8))
    return folder


def class_names(path):
    return list(read_layout(path).labels["seg"].class_names)


def test_classes_are_named_by_their_value_in_the_files(tmp_path):
    """NYU convention: file value 1 is class 0, named value_1, and a line says so and points at --class-names."""
    src = label_folder(tmp_path / "pairs", [0, 1, 2, 4])
    result = cli("prepare", "pairs", "--src", src, "--out", tmp_path / "p.h5")
    assert ("pairs: label -> seg: file values 1..4 are classes 0..3 (0 is void), named value_1..value_4; "
            "--class-names FILE names them (one per line, in value order)") in result.stderr.splitlines()
    assert class_names(tmp_path / "p.h5") == ["value_1", "value_2", "value_3", "value_4"]
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        assert handle["labels/seg"][0, 0].tolist() == [255, 0, 1, 3]  # value 4 -> class 3, named value_4

    result = cli("prepare", "pairs", "--src", src, "--out", tmp_path / "q.h5", "--label-base", 0,
                 "--num-classes", 5)
    assert "pairs: label -> seg: file values 0..4 are classes 0..4 (255 is void), named value_0..value_4; " \
           "--class-names FILE names them (one per line, in value order)" in result.stderr.splitlines()
    assert class_names(tmp_path / "q.h5") == ["value_0", "value_1", "value_2", "value_3", "value_4"]

    (tmp_path / "names.txt").write_text("wall\nfloor\nbed\nchair\n")
    result = cli("prepare", "pairs", "--src", src, "--out", tmp_path / "r.h5", "--class-names",
                 tmp_path / "names.txt")
    assert ("pairs: label -> seg: file values 1..4 are classes 0..3 (0 is void), named 'wall'..'chair' from "
            "--class-names") in result.stderr.splitlines()
    assert class_names(tmp_path / "r.h5") == ["wall", "floor", "bed", "chair"]


def blocky_pairs(folder, sizes):
    """One pair per (height, width) in ``sizes``, every modality of 2 x 2 blocks of one value (so nearest and area
    halving give each block's value exactly): rgb, depth in mm with hole blocks, labels 0..5 with void blocks."""
    folder.mkdir()
    expected = {}
    for k, (height, width) in enumerate(sizes):
        y, x = np.mgrid[0:height // 2, 0:width // 2]
        depth = (1000 + 250 * ((x + y + k) % 4)).astype(np.uint16)
        depth[(x + 2 * y) % 5 == 0] = 0  # holes
        label = ((x + 3 * y + k) % 6).astype(np.uint8)
        rgb = np.stack([(40 * x + 7 * k) % 256, (30 * y) % 256, np.full_like(x, 200)], axis=-1).astype(np.uint8)
        expected[k] = {"depth": depth, "label": label, "rgb": rgb}
        for name, small in expected[k].items():
            block = small.repeat(2, axis=0).repeat(2, axis=1)
            suffix = "label13" if name == "label" else name
            cv2.imwrite(str(folder / f"{k}_{suffix}.png"), block[..., ::-1] if name == "rgb" else block)
    return expected


def test_size_resizes_samples_of_any_size_keeping_holes_and_label_values(tmp_path):
    """Like `prepare images`: a sample whose modalities all have another size is resized, not refused."""
    expected = blocky_pairs(tmp_path / "pairs", [(12, 16), (24, 32), (12, 16)])
    result = cli("prepare", "pairs", "--src", tmp_path / "pairs", "--out", tmp_path / "p.h5", "--size", 6, 8)
    assert result.returncode == 0, result.stderr
    layout = read_layout(tmp_path / "p.h5")
    assert layout.modalities["rgb"].shape == (3, 6, 8, 3) and layout.labels["seg13"].shape == (3, 6, 8)
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        for row in (0, 2):  # 12 x 16 halved: each 2 x 2 block gives its own value, nothing blended
            depth = read_physical(handle["modalities/depth"], row)[..., 0]
            np.testing.assert_array_equal(np.rint(depth * 1000), expected[row]["depth"])
            label = expected[row]["label"].astype(np.int64) - 1
            label[expected[row]["label"] == 0] = 255
            np.testing.assert_array_equal(handle["labels/seg13"][row], label)
            np.testing.assert_array_equal(handle["modalities/rgb"][row], expected[row]["rgb"])
        # 24 x 32 quartered: nearest picks every 4th pixel (its top-left one), holes and void included
        picked = {name: small.repeat(2, axis=0).repeat(2, axis=1)[::4, ::4] for name, small in expected[1].items()}
        depth = np.rint(read_physical(handle["modalities/depth"], 1)[..., 0] * 1000)
        np.testing.assert_array_equal(depth, picked["depth"])
        assert (depth == 0).any() and set(np.unique(depth)) <= {0, 1000, 1250, 1500, 1750}  # no blend
        label = picked["label"].astype(np.int64) - 1
        label[picked["label"] == 0] = 255
        np.testing.assert_array_equal(handle["labels/seg13"][1], label)


def test_without_size_another_size_is_refused_with_the_flag_named(tmp_path):
    blocky_pairs(tmp_path / "pairs", [(12, 16), (24, 32)])
    line = error_line(cli("prepare", "pairs", "--src", tmp_path / "pairs", "--out", tmp_path / "p.h5"))
    assert line.endswith("1_depth.png: has shape (24, 32, 1), the first sample (12, 16, 1); pass --size H W to "
                         "resize all")
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.h5*"))


def test_modalities_of_one_sample_must_still_align_under_size(tmp_path):
    blocky_pairs(tmp_path / "pairs", [(12, 16), (24, 32)])
    cv2.imwrite(str(tmp_path / "pairs" / "1_rgb.png"), np.zeros((12, 16, 3), np.uint8))
    line = error_line(cli("prepare", "pairs", "--src", tmp_path / "pairs", "--out", tmp_path / "p.h5",
                          "--size", 6, 8))
    assert line.endswith("1_rgb.png: is 16x12, its pair 1_depth.png 32x24: modalities must align")
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.h5*"))
