"""Class-folder image converter: a fixture tree, the same tree zipped, and the real CIFAR-10 zip, then L / ab."""
from __future__ import annotations

import zipfile

import cv2
import h5py
import numpy as np
import pytest

from conftest import error_line, run_cli
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import read_layout


def write_tree(root, height=6, width=8):
    """wrapper/<split>/<class>/<n>.png with lossless, asymmetric content; returns {(split, class, name): rgb}."""
    images = {}
    for s, split in enumerate(["test", "train"]):
        for c, label in enumerate(["cat", "ant"]):
            folder = root / "wrapper" / split / label
            folder.mkdir(parents=True)
            for n in range(2 + s):
                y, x, ch = np.mgrid[0:height, 0:width, 0:3]
                rgb = ((11 * y + 3 * x + 80 * ch + 29 * n + 7 * c + 5 * s) % 256).astype(np.uint8)
                cv2.imwrite(str(folder / f"{n:03d}.png"), rgb[..., ::-1])
                images[split, label, f"{n:03d}.png"] = rgb
    return images


def _check(out, images):
    layout = read_layout(out)
    assert layout.labels["label"].class_names == ("ant", "cat")
    assert layout.splits == {"test": 4, "train": 6}
    order = sorted(images)  # by split, class, file name
    with h5py.File(out, "r") as handle:
        for row, key in enumerate(order):
            np.testing.assert_array_equal(handle["modalities/rgb"][row], images[key])
        labels = handle["labels/label"][()].tolist()
        assert labels == [("ant", "cat").index(label) for _, label, _ in order]
        assert handle["splits/train"][()].tolist() == list(range(4, 10))


def test_tree_and_zip_give_the_same_file(tmp_path):
    images = write_tree(tmp_path / "tree")
    run_cli("prepare", "images", "--src", tmp_path / "tree", "--out", tmp_path / "tree.h5", check=True)
    _check(tmp_path / "tree.h5", images)
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        for path in sorted((tmp_path / "tree").rglob("*.png")):
            archive.write(path, path.relative_to(tmp_path / "tree"))
    run_cli("prepare", "images", "--src", tmp_path / "tree.zip", "--out", tmp_path / "zip.h5", check=True)
    _check(tmp_path / "zip.h5", images)


@pytest.mark.parametrize("case", ["mixed sizes", "missing source", "mixed depths", "not an image", "empty image",
                                  "corrupt zip member"])
def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, case):
    write_tree(tmp_path / "tree")
    cat = tmp_path / "tree" / "wrapper" / "train" / "cat"
    src = tmp_path / "tree"
    if case == "mixed sizes":
        cv2.imwrite(str(cat / "009.png"), np.zeros((7, 8, 3), np.uint8))
        expected = "is 8x7, the first image 8x6; pass --size H W"
    elif case == "missing source":
        src = tmp_path / "absent"
        expected = "no such folder or zip file"
    elif case == "mixed depths":
        cv2.imwrite(str(cat.parent / "stray.png"), np.zeros((6, 8, 3), np.uint8))
        expected = "images at mixed depths"
    elif case == "not an image":
        (cat / "009.png").write_bytes(b"not a png")
        expected = "cannot decode the image"
    elif case == "empty image":
        (cat / "009.png").write_bytes(b"")
        expected = "009.png: is an empty file"
    else:
        src = tmp_path / "tree.zip"
        with zipfile.ZipFile(src, "w") as archive:
            for path in sorted((tmp_path / "tree").rglob("*.png")):
                archive.write(path, path.relative_to(tmp_path / "tree"))
        data = bytearray(src.read_bytes())
        offset = data.index(b"wrapper/train/cat/001.png") + len(b"wrapper/train/cat/001.png") + 10
        data[offset:offset + 8] = bytes(8)  # damage one member's stored bytes
        src.write_bytes(bytes(data))
        expected = "cannot be read from the archive"
    line = error_line(run_cli("prepare", "images", "--src", src, "--out", tmp_path / "i.h5"))
    assert expected in line
    assert not (tmp_path / "i.h5").exists() and not list(tmp_path.glob(".i.h5*"))


def test_real_cifar10_zip_subset_then_lab_views(tmp_path, shared_data):
    out = tmp_path / "cifar.h5"
    run_cli("prepare", "images", "--src", shared_data / "cifar10" / "cifar10-jpeg.zip", "--out", out,
            "--max-per-class", 4, check=True)
    layout = read_layout(out)
    assert layout.num_samples == 80 and layout.splits == {"test": 40, "train": 40}
    assert layout.labels["label"].class_names[:3] == ("airplane", "automobile", "bird")
    assert layout.modalities["rgb"].shape == (80, 32, 32, 3)
    data = PairedDataset(out, "train", modalities=["lab_l", "lab_ab"], labels=["label"])
    sample = data[0]
    assert sample["lab_l"].shape == (1, 32, 32) and sample["lab_ab"].shape == (2, 32, 32)
    assert -1.0 <= float(sample["lab_l"].min()) and float(sample["lab_l"].max()) <= 1.0
    assert sample["lab_ab"].abs().max() <= 1.0 and sample["lab_ab"].std() > 0.01  # colour survived
    assert sorted({data[i]["label"] for i in range(len(data))}) == list(range(10))


def test_single_split_tree_keeps_its_split_and_archive_clutter_is_skipped(tmp_path):
    write_tree(tmp_path / "tree")
    with zipfile.ZipFile(tmp_path / "test_only.zip", "w") as archive:
        for path in sorted((tmp_path / "tree" / "wrapper" / "test").rglob("*.png")):
            archive.write(path, path.relative_to(tmp_path / "tree"))
            clutter = path.relative_to(tmp_path / "tree").with_name("._" + path.name)
            archive.writestr(f"__MACOSX/{clutter}", b"resource fork")
    run_cli("prepare", "images", "--src", tmp_path / "test_only.zip", "--out", tmp_path / "t.h5", check=True)
    assert read_layout(tmp_path / "t.h5").splits == {"test": 4}
    run_cli("prepare", "images", "--src", tmp_path / "tree" / "wrapper" / "train", "--split", "extra",
            "--out", tmp_path / "c.h5", check=True)  # <class>/<image>: one split, named by --split
    assert read_layout(tmp_path / "c.h5").splits == {"extra": 6}
    flat = tmp_path / "tree" / "wrapper" / "train" / "cat"
    assert "images lie directly in the root" in error_line(
        run_cli("prepare", "images", "--src", flat, "--out", tmp_path / "f.h5"))
    result = run_cli("prepare", "images", "--src", flat, "--out", tmp_path / "f.h5", "--max-per-class", 0)
    assert result.returncode == 2 and "must be a positive integer" in result.stderr
