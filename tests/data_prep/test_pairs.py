"""Folder-of-pairs converter: fixtures with 8/16-bit PNGs, a CSV index, and the 10 real NYU frames."""
from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from conftest import cli, error_line, run_cli
from crossmodal.data.codecs import read_physical
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import read_layout
from crossmodal.data.transforms import PairedTransform
from tolerance import gamma


def write_pairs(folder, ids=("0001", "0002", "0010"), height=6, width=9):
    """<id>_rgb.png (8-bit), <id>_depth.png (16-bit mm), <id>_label13.png (0 void, 1..13); returns the arrays."""
    folder.mkdir(exist_ok=True)
    arrays = {}
    for k, sample_id in enumerate(ids):
        y, x, c = np.mgrid[0:height, 0:width, 0:3]
        rgb = ((9 * y + 4 * x + 70 * c + 17 * k) % 256).astype(np.uint8)
        depth = (500 + 100 * y + 7 * x + 1000 * k).astype(np.uint16)[..., 0]
        label = ((y + 2 * x + k) % 14).astype(np.uint8)[..., 0]
        cv2.imwrite(str(folder / f"{sample_id}_rgb.png"), rgb[..., ::-1])
        cv2.imwrite(str(folder / f"{sample_id}_depth.png"), depth)
        cv2.imwrite(str(folder / f"{sample_id}_label13.png"), label)
        arrays[sample_id] = {"rgb": rgb, "depth": depth, "label": label}
    return arrays


def test_folder_round_trip_in_natural_order(tmp_path):
    arrays = write_pairs(tmp_path / "pairs")
    run_cli("prepare", "pairs", "--src", tmp_path / "pairs", "--out", tmp_path / "p.h5", check=True)
    layout = read_layout(tmp_path / "p.h5")
    assert set(layout.modalities) == {"rgb", "depth"} and set(layout.labels) == {"seg13"}
    assert layout.labels["seg13"].num_classes == 13
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        for row, sample_id in enumerate(["0001", "0002", "0010"]):
            expected = arrays[sample_id]
            np.testing.assert_array_equal(handle["modalities/rgb"][row], expected["rgb"])
            # millimetres read as n x float32(0.001): two float32 roundings
            np.testing.assert_allclose(read_physical(handle["modalities/depth"], row)[..., 0], expected["depth"] / 1000.0,
                                       rtol=gamma(2), atol=0)
            label = expected["label"].astype(np.int64) - 1
            label[expected["label"] == 0] = 255
            np.testing.assert_array_equal(handle["labels/seg13"][row], label)
        assert handle["splits/train"][()].tolist() == [0, 1, 2]


def test_csv_index_with_splits_and_other_modalities(tmp_path):
    write_pairs(tmp_path / "pairs")
    for sample_id in ("0001", "0002", "0010"):
        cv2.imwrite(str(tmp_path / "pairs" / f"{sample_id}_thermal.png"), np.full((6, 9), 40, np.uint16))
    (tmp_path / "index.csv").write_text(
        "frame,rgb,thermal,split\n0010,pairs/0010_rgb.png,pairs/0010_thermal.png,test\n"
        "0001,pairs/0001_rgb.png,pairs/0001_thermal.png,train\n")
    run_cli("prepare", "pairs", "--src", tmp_path / "index.csv", "--out", tmp_path / "p.h5", check=True)
    layout = read_layout(tmp_path / "p.h5")
    assert layout.modalities["thermal"].dtype == np.uint16 and layout.modalities["thermal"].shape == (2, 6, 9, 1)
    assert layout.splits == {"test": 1, "train": 1}
    sample = PairedDataset(tmp_path / "p.h5", "test", modalities=["thermal", "rgb"])[0]
    assert sample["thermal"].shape == (1, 6, 9)  # a generic modality, no code needed


@pytest.mark.parametrize("case", ["missing pair", "8-bit depth", "size differs", "no files"])
def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, case):
    folder = tmp_path / "pairs"
    write_pairs(folder)
    if case == "missing pair":
        (folder / "0002_depth.png").unlink()
        expected = "sample '0002' lacks ['depth']"
    elif case == "8-bit depth":
        cv2.imwrite(str(folder / "0001_depth.png"), np.zeros((6, 9), np.uint8))
        expected = "uint8 depth needs --depth-scale"
    elif case == "size differs":
        cv2.imwrite(str(folder / "0010_rgb.png"), np.zeros((5, 9, 3), np.uint8))
        expected = "0010_rgb.png: is 9x5, its pair 0010_depth.png 9x6: modalities must align"
    else:
        for path in folder.iterdir():
            path.unlink()
        expected = "no <id>_<modality> image files found"
    line = error_line(run_cli("prepare", "pairs", "--src", folder, "--out", tmp_path / "p.h5"))
    assert expected in line
    assert not (tmp_path / "p.h5").exists() and not list(tmp_path.glob(".p.h5*"))


def test_real_nyu_frames(tmp_path, shared_data):
    """The 10 real NYU frames through the CSV index, then paired crops that keep labels on the right pixels."""
    out = tmp_path / "nyu_mini.h5"
    run_cli("prepare", "pairs", "--src", shared_data / "nyu_mini" / "index.csv", "--out", out,
            "--size", 240, 320, check=True)
    layout = read_layout(out)
    assert layout.num_samples == 10 and layout.modalities["rgb"].shape == (10, 240, 320, 3)
    assert 0.5 < layout.modalities["depth"].value_range[0] and layout.modalities["depth"].value_range[1] < 10.5
    assert layout.labels["seg13"].num_classes == 13
    original = cv2.imread(str(shared_data / "nyu_mini" / "0001_label13.png"), cv2.IMREAD_UNCHANGED)
    with h5py.File(out, "r") as handle:
        stored = handle["labels/seg13"][0]
    expected = original[::2, ::2].astype(np.int64) - 1
    expected[original[::2, ::2] == 0] = 255
    assert (stored == expected).mean() > 0.97  # nearest 2x downscaling picks one of each 2 x 2 block
    data = PairedDataset(out, "train", modalities=["rgb", "depth"], labels=["seg13"],
                         transform=PairedTransform(size=(120, 160), train=True))
    sample = data[0]
    assert sample["rgb"].shape == (3, 120, 160) and sample["seg13"].shape == (120, 160)
    assert set(np.unique(sample["seg13"].numpy())) <= set(range(13)) | {255}


def test_csv_details_grey_colour_and_default_split(tmp_path):
    write_pairs(tmp_path / "pairs")
    cv2.imwrite(str(tmp_path / "pairs" / "0002_rgb.png"), np.full((6, 9), 77, np.uint8))  # a grey picture
    (tmp_path / "index.csv").write_text("id,rgb,dpeth\n\n0002,pairs/0002_rgb.png,pairs/0002_depth.png\n")
    result = run_cli("prepare", "pairs", "--src", tmp_path / "index.csv", "--out", tmp_path / "p.h5",
                     "--split", "val", check=True)
    assert "dpeth -> dpeth (stored as is)" in result.stderr  # a typo is visible, not silent
    layout = read_layout(tmp_path / "p.h5")
    assert layout.splits == {"val": 1}
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        assert (handle["modalities/rgb"][0] == 77).all()


@pytest.mark.parametrize("case", ["empty cell", "binary csv", "label 256", "out is a folder", "missing file",
                                  "no modality column", "duplicate column", "empty image", "all void",
                                  "slash in name"])
def test_more_bad_inputs(tmp_path, case):
    write_pairs(tmp_path / "pairs")
    src, out = tmp_path / "index.csv", tmp_path / "p.h5"
    src.write_text("id,rgb,depth\n0001,pairs/0001_rgb.png,pairs/0001_depth.png\n0002,pairs/0002_rgb.png,\n")
    expected = "line 3: no file given for ['depth']"
    if case == "binary csv":
        src.write_bytes((tmp_path / "pairs" / "0001_rgb.png").read_bytes())
        expected = "not a readable CSV text file"
    elif case == "label 256":
        cv2.imwrite(str(tmp_path / "pairs" / "0002_label13.png"), np.full((6, 9), 256, np.uint16))
        src = tmp_path / "pairs"
        expected = "class ids above 254 are not supported"
    elif case == "out is a folder":
        src, out = tmp_path / "pairs", tmp_path
        expected = "is a folder; --out takes the path of the .h5 file"
    elif case == "missing file":
        src.write_text("id,rgb\n0001,pairs/0001_rgb.png\n0002,pairs/0009_rgb.png\n")
        expected = "0009_rgb.png: no such file (sample '0002', modality 'rgb')"
    elif case == "no modality column":
        src.write_text("id,split\n0001,train\n")
        expected = "needs a header id,<modality>,...[,split] with distinct names"
    elif case == "duplicate column":
        src.write_text("id,rgb,rgb\n0001,pairs/0001_rgb.png,pairs/0002_rgb.png\n")
        expected = "needs a header id,<modality>,...[,split] with distinct names"
    elif case == "empty image":
        (tmp_path / "pairs" / "0002_rgb.png").write_bytes(b"")
        src = tmp_path / "pairs"
        expected = "0002_rgb.png: is an empty file"
    elif case == "all void":
        src.write_text("id,rgb,label\n0001,pairs/0001_rgb.png,void.png\n")
        cv2.imwrite(str(tmp_path / "void.png"), np.zeros((6, 9), np.uint8))
        expected = "every 'label' pixel is void: no classes to store (pass --num-classes)"
    elif case == "slash in name":
        src.write_text("id,ir/near\n0001,pairs/0001_rgb.png\n")
        expected = str(out) + ": modality name 'ir/near' is not allowed"
    line = error_line(run_cli("prepare", "pairs", "--src", src, "--out", out))
    assert expected in line
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.h5*"))


def test_same_source_same_data(tmp_path):
    write_pairs(tmp_path / "pairs")
    for name in ("one.h5", "two.h5"):
        run_cli("prepare", "pairs", "--src", tmp_path / "pairs", "--out", tmp_path / name, check=True)
    with h5py.File(tmp_path / "one.h5", "r") as one, h5py.File(tmp_path / "two.h5", "r") as two:
        for group in ("modalities", "labels", "splits"):
            for name in one[group]:
                np.testing.assert_array_equal(one[group][name][()], two[group][name][()])
                for key, value in one[group][name].attrs.items():
                    np.testing.assert_array_equal(value, two[group][name].attrs[key])


def test_label_conventions_class_names_and_palette_pngs(tmp_path):
    from PIL import Image
    folder = tmp_path / "pairs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_rgb.png"), np.zeros((4, 5, 3), np.uint8))
    ids = np.array([[0, 1, 2, 255, 3]] * 4, np.uint8)  # --label-base 0: ids as stored, 255 void
    picture = Image.fromarray(ids, mode="P")
    picture.putpalette([value for index in range(256) for value in (index, 255 - index, 7)])
    picture.save(folder / "a_seg.png")  # a palette PNG: OpenCV would decode its colours, not its ids
    (tmp_path / "names.txt").write_text("sky\nroad\ncar\nperson\n")
    run_cli("prepare", "pairs", "--src", folder, "--out", tmp_path / "p.h5", "--label-base", 0,
            "--class-names", tmp_path / "names.txt", check=True)
    layout = read_layout(tmp_path / "p.h5")
    assert layout.labels["seg"].class_names == ("sky", "road", "car", "person")
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        np.testing.assert_array_equal(handle["labels/seg"][0], ids)
    run_cli("prepare", "pairs", "--src", folder, "--out", tmp_path / "q.h5", "--label-base", 0,
            "--num-classes", 6, check=True)
    assert read_layout(tmp_path / "q.h5").labels["seg"].num_classes == 6
    assert "has class id 3, beyond the 2 classes given" in error_line(
        run_cli("prepare", "pairs", "--src", folder, "--out", tmp_path / "r.h5", "--label-base", 0,
                "--num-classes", 2))


@pytest.mark.parametrize("storage", ["uint16", "float32"])
def test_non_finite_depth_becomes_counted_holes(tmp_path, storage):
    """A float TIFF's NaN and infinities are holes, counted in `nonfinite` (docs/format.md) and said on stderr."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    depth = np.full((4, 5), 2.5, np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -np.inf
    assert cv2.imwrite(str(folder / "a_depth.tiff"), depth)
    assert np.isnan(cv2.imread(str(folder / "a_depth.tiff"), cv2.IMREAD_UNCHANGED)[0, 0])  # kept by the file
    result = cli("prepare", "pairs", "--src", folder, "--out", tmp_path / "p.h5", "--depth-scale", 1,
                 "--depth-storage", storage)
    assert result.returncode == 0, result.stderr
    assert "pairs: depth: 3 NaN or infinite values written as holes (0)" in result.stderr.splitlines()
    with h5py.File(tmp_path / "p.h5", "r") as handle:
        stored = read_physical(handle["modalities/depth"], 0)[..., 0]
    assert stored[0, 0] == stored[1, 1] == stored[2, 2] == 0 and (stored[3] == 2.5).all()
    if storage == "uint16":  # the attribute of scaled integers, which `inspect` shows
        assert read_layout(tmp_path / "p.h5").modalities["depth"].nonfinite == 3
        assert "3 non-finite written as holes" in cli("inspect", tmp_path / "p.h5").stdout


def _rgb_folder(folder, num):
    """``num`` ids (natural order 1..num, not the listing order) with one small rgb picture each."""
    folder.mkdir()
    for k in range(num):
        cv2.imwrite(str(folder / f"{k + 1}_rgb.png"), np.full((2, 3, 3), k, np.uint8))
    return folder


def _splits(path):
    with h5py.File(path, "r") as handle:
        return {name: handle["splits"][name][()].tolist() for name in handle["splits"]}


def test_test_fraction_makes_spread_deterministic_train_and_test(tmp_path):
    folder = _rgb_folder(tmp_path / "pairs", 20)
    for name, seed in (("a.h5", 0), ("b.h5", 0), ("c.h5", 5)):
        assert cli("prepare", "pairs", "--src", folder, "--out", tmp_path / name, "--test-fraction", 0.25,
                   "--seed", seed).returncode == 0
    splits = _splits(tmp_path / "a.h5")
    assert sorted(splits) == ["test", "train"] and len(splits["test"]) == 5 and len(splits["train"]) == 15
    assert sorted(splits["test"] + splits["train"]) == list(range(20))  # disjoint, every pair in one split
    assert sorted(row // 4 for row in splits["test"]) == [0, 1, 2, 3, 4]  # one per block of 4: spread out
    assert _splits(tmp_path / "b.h5") == splits  # the same seed, the same split
    assert _splits(tmp_path / "c.h5")["test"] != splits["test"]
    with h5py.File(tmp_path / "a.h5", "r") as handle:  # rows follow the ids' natural order
        assert [int(handle["modalities/rgb"][row][0, 0, 0]) for row in range(20)] == list(range(20))
    options = read_layout(tmp_path / "a.h5").provenance["options"]
    assert options["test_fraction"] == 0.25 and options["seed"] == 0
    assert read_layout(tmp_path / "c.h5").provenance["options"]["seed"] == 5


def test_test_fraction_on_a_csv_without_split_column_rounds(tmp_path):
    _rgb_folder(tmp_path / "pairs", 7)
    (tmp_path / "index.csv").write_text("id,rgb\n" + "".join(f"{k},pairs/{k}_rgb.png\n" for k in range(7, 0, -1)))
    assert cli("prepare", "pairs", "--src", tmp_path / "index.csv", "--out", tmp_path / "p.h5",
               "--test-fraction", 0.3).returncode == 0
    assert read_layout(tmp_path / "p.h5").splits == {"test": 2, "train": 5}  # round(7 * 0.3) = 2


@pytest.mark.parametrize("case", ["with --split", "split column", "fraction 0", "fraction 1.5", "fraction nan",
                                  "empty test", "empty train"])
def test_test_fraction_refusals(tmp_path, case):
    folder = _rgb_folder(tmp_path / "pairs", 4)
    src, extra, fraction = folder, [], 0.5
    if case == "with --split":
        extra, expected = ["--split", "val"], ("--test-fraction: makes the splits train and test; it does not go "
                                               "with --split val")
    elif case == "split column":
        src = tmp_path / "index.csv"
        src.write_text("id,rgb,split\n1,pairs/1_rgb.png,train\n2,pairs/2_rgb.png,test\n")
        expected = "index.csv: has a 'split' column: its rows name their splits already; drop --test-fraction"
    elif case.startswith("fraction"):
        fraction = case.split()[1]
        expected = f"--test-fraction: must be a number in (0, 1), got {float(fraction)}"
    else:
        fraction = 0.1 if case == "empty test" else 0.9
        expected = f"--test-fraction {fraction} of 4 pairs leaves a split empty"
    line = error_line(cli("prepare", "pairs", "--src", src, "--out", tmp_path / "p.h5", "--test-fraction",
                          fraction, *extra))
    assert expected in line
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.h5*"))
