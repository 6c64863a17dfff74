"""STL-10, the binary release (``stl10_binary/``) -> paired file with rgb and the class labels.

Each image is 3 x 96 x 96 uint8 stored column-major (channel, then column, then row), so a naive reshape shows
the picture transposed; labels are 1..10 and become 0..9, unlabelled images get -1. L / ab views come from the
derived modalities ``lab_l`` and ``lab_ab`` at load time.

References:
    - [0] Coates, Lee, Ng, An Analysis of Single-Layer Networks in Unsupervised Feature Learning, AISTATS 2011
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from crossmodal.argtypes import non_negative_int
from crossmodal.data.codecs import DEFAULT_CODEC
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep.common import add_common_arguments, checked_size, resize_image
from crossmodal.progress import sample_bar
from crossmodal.errors import DataError

NAME = "stl10"
HELP = "the STL-10 binary release (train/test/unlabeled _X.bin, _y.bin, class_names.txt)"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
BLOCK = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="DIR", help="the stl10_binary folder")
    parser.add_argument("--max-unlabeled", type=non_negative_int, default=None, metavar="N",
                        help="keep only the first N unlabelled images (all 100,000 by default)")
    add_common_arguments(parser)


def _images(path: str) -> np.memmap:
    size = os.path.getsize(path)
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(path, f"size {size} bytes is not a whole number of {IMAGE_BYTES}-byte images (truncated?)")
    return np.memmap(path, np.uint8, "r", shape=(size // IMAGE_BYTES, 3, SIDE, SIDE))


def _labels(path: str, count: int, num_classes: int) -> np.ndarray:
    labels = np.fromfile(path, np.uint8).astype(np.int64)
    if len(labels) != count:
        raise DataError(path, f"{len(labels)} labels for {count} images")
    if labels.min() < 1 or labels.max() > num_classes:
        raise DataError(path, f"labels must be 1..{num_classes}, found {labels.min()}..{labels.max()}")
    return labels - 1


def run(args: argparse.Namespace) -> None:
    convert(args.src, args.out, size=checked_size(args.size), overwrite=args.overwrite,
            compression=args.compression, max_unlabeled=args.max_unlabeled)


def convert(src: str, out: str, size: tuple[int, int] | None = None, overwrite: bool = False,
            compression: str = DEFAULT_CODEC, max_unlabeled: int | None = None) -> None:
    """Convert an STL-10 binary folder; splits train, test, unlabeled and fold0..fold9 when given."""
    if not os.path.isdir(src):
        raise DataError(src, "no such folder")
    required = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    missing = [name for name in required if not os.path.isfile(os.path.join(src, name))]
    if missing:
        raise DataError(src, f"missing {missing}: is this the stl10_binary folder?")
    with open(os.path.join(src, "class_names.txt")) as handle:
        class_names = [line.strip() for line in handle if line.strip()]
    parts: list[tuple[str, np.memmap, np.ndarray]] = []
    for split in ("train", "test"):
        images = _images(os.path.join(src, f"{split}_X.bin"))
        parts.append((split, images, _labels(os.path.join(src, f"{split}_y.bin"), len(images), len(class_names))))
    unlabeled_path = os.path.join(src, "unlabeled_X.bin")
    if os.path.isfile(unlabeled_path) and max_unlabeled != 0:
        images = _images(unlabeled_path)[:max_unlabeled]
        parts.append(("unlabeled", images, np.full(len(images), -1, np.int64)))
    folds = _folds(os.path.join(src, "fold_indices.txt"), len(parts[0][1]))

    total = sum(len(images) for _, images, _ in parts)
    out_h, out_w = size or (SIDE, SIDE)
    options = {"size": size, "max_unlabeled": max_unlabeled}
    with PairedWriter(out, total, source=os.path.abspath(src), converter=f"data_prep.{NAME}",
                      options=options, overwrite=overwrite,
                      compression=compression) as writer:
        writer.add_modality("rgb", out_h, out_w, 3, np.uint8, kind="rgb", units="sRGB 0-255")
        start = 0
        bar = sample_bar(None, total, "stl10")
        for split, images, _ in parts:
            for offset in range(0, len(images), BLOCK):
                # (n, channel, column, row) -> (n, row, column, channel)
                block = np.asarray(images[offset:offset + BLOCK]).transpose(0, 3, 2, 1)
                block = np.stack([resize_image(image, size) for image in block]) if size else block
                writer.write_batch(start + offset, rgb=block)
                bar.update(len(block))
            writer.add_split(split, range(start, start + len(images)))
            start += len(images)
        bar.close()
        writer.add_class_labels("label", np.concatenate([labels for _, _, labels in parts]), class_names)
        for fold, indices in enumerate(folds):
            writer.add_split(f"fold{fold}", indices)


def _folds(path: str, num_train: int) -> list[np.ndarray]:
    """The 10 predefined training folds (0-based indices into train), if the file is there."""
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        folds = [np.array(line.split(), np.int64) for line in handle if line.strip()]
    for fold in folds:
        if fold.size and (fold.min() < 0 or fold.max() >= num_train):
            raise DataError(path, f"fold index out of range for {num_train} training images")
    return folds
