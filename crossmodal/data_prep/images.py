"""A class-folder image tree, or a zip of one -> paired file with rgb and class labels.

Layouts (found below any single wrapping folder, such as the ``cifar10/`` inside ``cifar10-jpeg.zip``):
``<root>/<split>/<class>/<image>`` (splits by folder) or ``<root>/<class>/<image>`` (one split, ``--split``).
The rows are ordered by split, class and file name, so the output is the same on every run. L / ab come from
the derived modalities ``lab_l`` and ``lab_ab`` at load time.
"""
from __future__ import annotations

import argparse
import os
import zipfile
import zlib
from collections import defaultdict
from typing import Callable

import numpy as np

from crossmodal.argtypes import positive_int
from crossmodal.data.codecs import DEFAULT_CODEC
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep.common import (add_common_arguments, checked_size, decode_image, resize_image,
                                         to_rgb8)
from crossmodal.progress import sample_bar
from crossmodal.errors import DataError

NAME = "images"
HELP = "a class-folder tree <root>/<split>/<class>/*.jpg|png, or a zip of one"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="DIR_OR_ZIP", help="the image tree or a .zip of it")
    parser.add_argument("--max-per-class", type=positive_int, default=None, metavar="N",
                        help="keep the first N images (by name) of each class in each split")
    parser.add_argument("--split", default="train", help="the split name when the tree has no split level")
    add_common_arguments(parser)


SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "unlabeled", "unlabelled")


def _is_junk(name: str) -> bool:
    """Archive clutter: macOS resource forks and hidden files."""
    return name.startswith("__MACOSX/") or any(part.startswith(".") for part in name.split("/"))


def _clean(name: str) -> str:
    """An archive member name without a leading ./ or /."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name


def _list_files(src: str) -> tuple[list[str], Callable[[str], bytes]]:
    """Relative paths of the image files under ``src`` (sorted) and a reader of one of them."""
    if zipfile.is_zipfile(src):
        archive = zipfile.ZipFile(src)
        members = {_clean(n): n for n in archive.namelist() if n.lower().endswith(EXTENSIONS)}
        members = {name: member for name, member in members.items() if not _is_junk(name)}

        def read_member(name: str) -> bytes:
            try:
                return archive.read(members[name])
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
                raise DataError(f"{src}:{name}", f"cannot be read from the archive: {err}") from None
        return sorted(members), read_member
    if os.path.isdir(src):
        names = []
        for folder, _, filenames in os.walk(src):
            for filename in filenames:
                name = os.path.relpath(os.path.join(folder, filename), src).replace(os.sep, "/")
                if filename.lower().endswith(EXTENSIONS) and not _is_junk(name):
                    names.append(name)

        def read(name: str) -> bytes:
            with open(os.path.join(src, name), "rb") as handle:
                return handle.read()
        return sorted(names), read
    if os.path.exists(src):
        raise DataError(src, "neither a folder nor a zip file")
    raise DataError(src, "no such folder or zip file")


def index_tree(src: str, names: list[str], default_split: str,
               max_per_class: int | None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """[(split, class, relative path)] in row order, and the sorted class names.

    Wrapping folders shared by every file are skipped, down to three levels or to a folder named like a split
    (train, test, val, unlabeled ...). Then three levels are ``<split>/<class>/<image>`` (the split keeps its
    folder's name) and two are ``<class>/<image>`` in ``default_split``.
    """
    if not names:
        raise DataError(src, "holds no image files")
    parts = [name.split("/") for name in names]
    while (len({p[0] for p in parts}) == 1 and min(len(p) for p in parts) > 2
           and parts[0][0].lower() not in SPLIT_NAMES):
        parts = [p[1:] for p in parts]
    depths = {len(p) for p in parts}
    if depths == {3}:
        entries = [(p[0], p[1], name) for p, name in zip(parts, names)]
    elif depths == {2}:
        entries = [(default_split, p[0], name) for p, name in zip(parts, names)]
    elif depths == {1}:
        raise DataError(src, "images lie directly in the root: expected <class>/<image> or "
                             "<split>/<class>/<image> folders")
    else:
        raise DataError(src, "expected <split>/<class>/<image> or <class>/<image> (images at mixed depths)")
    entries.sort()
    if max_per_class is not None:
        kept: dict[tuple[str, str], int] = defaultdict(int)
        selected = []
        for split, label, name in entries:
            if kept[split, label] < max_per_class:
                kept[split, label] += 1
                selected.append((split, label, name))
        entries = selected
    return entries, sorted({label for _, label, _ in entries})


def run(args: argparse.Namespace) -> None:
    convert(args.src, args.out, size=checked_size(args.size), overwrite=args.overwrite,
            compression=args.compression, max_per_class=args.max_per_class, split=args.split)


def convert(src: str, out: str, size: tuple[int, int] | None = None, overwrite: bool = False,
            compression: str = DEFAULT_CODEC, max_per_class: int | None = None, split: str = "train") -> None:
    """Convert a class-folder tree or zip; every image must share one size unless ``size`` is given."""
    names, read = _list_files(src)
    entries, class_names = index_tree(src, names, split, max_per_class)

    def load(name: str) -> np.ndarray:
        origin = f"{src}:{name}"
        return resize_image(to_rgb8(decode_image(read(name), origin), origin), size)

    height, width = load(entries[0][2]).shape[:2]
    options = {"size": size, "max_per_class": max_per_class}
    with PairedWriter(out, len(entries), source=os.path.abspath(src), converter=f"data_prep.{NAME}",
                      options=options, overwrite=overwrite,
                      compression=compression) as writer:
        writer.add_modality("rgb", height, width, 3, np.uint8, kind="rgb", units="sRGB 0-255")
        batch: list[np.ndarray] = []
        for row, (_, _, name) in enumerate(sample_bar(entries, len(entries), "images")):
            image = load(name)
            if image.shape[:2] != (height, width):
                raise DataError(f"{src}:{name}", f"is {image.shape[1]}x{image.shape[0]}, the first image "
                                                 f"{width}x{height}; pass --size H W to resize all")
            batch.append(image)
            if len(batch) == 256 or row == len(entries) - 1:
                writer.write_batch(row + 1 - len(batch), rgb=np.stack(batch))
                batch = []
        lookup = {label: index for index, label in enumerate(class_names)}
        writer.add_class_labels("label", [lookup[label] for _, label, _ in entries], class_names)
        for split_name in sorted({s for s, _, _ in entries}):
            writer.add_split(split_name, [row for row, entry in enumerate(entries) if entry[0] == split_name])
