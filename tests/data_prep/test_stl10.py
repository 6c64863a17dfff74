"""STL-10 converter on a fixture in the binary release's exact layout (column-major 3 x 96 x 96, labels 1..10)."""
from __future__ import annotations

import h5py
import numpy as np

from conftest import error_line, run_cli
from crossmodal.data.format import read_layout

CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def pictures(start: int, count: int) -> np.ndarray:
    """Asymmetric (N, 96, 96, 3) pictures, different per index."""
    y, x, c = np.mgrid[0:96, 0:96, 0:3]
    return np.stack([((5 * y + 2 * x + 60 * c + 13 * k) % 256).astype(np.uint8) for k in range(start, start + count)])


def write_release(folder, train=4, test=3, unlabeled=5, folds=True) -> dict[str, np.ndarray]:
    folder.mkdir()
    images = {"train": pictures(0, train), "test": pictures(100, test), "unlabeled": pictures(200, unlabeled)}
    labels = {"train": np.array([1, 10, 3, 4][:train], np.uint8), "test": np.array([2, 2, 9][:test], np.uint8)}
    for split, array in images.items():
        # on disk: (N, channel, column, row)
        array.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
    for split, array in labels.items():
        array.tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    if folds:
        (folder / "fold_indices.txt").write_text("0 2\n1 3\n")
    return {**{f"{k}_images": v for k, v in images.items()}, **{f"{k}_labels": v for k, v in labels.items()}}


def test_round_trip_orientation_labels_and_splits(tmp_path):
    arrays = write_release(tmp_path / "stl10_binary")
    result = run_cli("prepare", "stl10", "--src", tmp_path / "stl10_binary", "--out", tmp_path / "stl.h5")
    assert result.returncode == 0, result.stderr
    layout = read_layout(tmp_path / "stl.h5")
    assert layout.splits == {"train": 4, "test": 3, "unlabeled": 5, "fold0": 2, "fold1": 2}
    assert layout.labels["label"].class_names == tuple(CLASSES)
    with h5py.File(tmp_path / "stl.h5", "r") as handle:
        rgb = handle["modalities/rgb"][()]
        np.testing.assert_array_equal(rgb[:4], arrays["train_images"])  # not transposed
        np.testing.assert_array_equal(rgb[4:7], arrays["test_images"])
        np.testing.assert_array_equal(rgb[7:], arrays["unlabeled_images"])
        assert handle["labels/label"][()].tolist() == [0, 9, 2, 3, 1, 1, 8, -1, -1, -1, -1, -1]
        assert handle["splits/test"][()].tolist() == [4, 5, 6]
        assert handle["splits/fold1"][()].tolist() == [1, 3]


def test_resize_and_unlabeled_limit(tmp_path):
    write_release(tmp_path / "stl10_binary", folds=False)
    run_cli("prepare", "stl10", "--src", tmp_path / "stl10_binary", "--out", tmp_path / "stl.h5",
            "--size", 32, 32, "--max-unlabeled", 2, check=True)
    layout = read_layout(tmp_path / "stl.h5")
    assert layout.modalities["rgb"].shape == (9, 32, 32, 3)
    assert layout.splits == {"train": 4, "test": 3, "unlabeled": 2}


def test_mismatched_counts_and_truncation_are_one_line(tmp_path):
    write_release(tmp_path / "stl10_binary")
    labels = tmp_path / "stl10_binary" / "train_y.bin"
    original = labels.read_bytes()
    labels.write_bytes(original[:-1])
    assert "3 labels for 4 images" in error_line(
        run_cli("prepare", "stl10", "--src", tmp_path / "stl10_binary", "--out", tmp_path / "stl.h5"))
    labels.write_bytes(original)
    images = tmp_path / "stl10_binary" / "test_X.bin"
    images.write_bytes(images.read_bytes()[:-100])
    assert "not a whole number of 27648-byte images" in error_line(
        run_cli("prepare", "stl10", "--src", tmp_path / "stl10_binary", "--out", tmp_path / "stl.h5"))
    (tmp_path / "stl10_binary" / "class_names.txt").unlink()
    assert "missing ['class_names.txt']" in error_line(
        run_cli("prepare", "stl10", "--src", tmp_path / "stl10_binary", "--out", tmp_path / "stl.h5"))
    assert not (tmp_path / "stl.h5").exists()
