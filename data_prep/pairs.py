"""A folder (or a CSV index) of paired image files -> paired file.

Folder layout: ``<id>_<modality>.<ext>``, e.g. ``0001_rgb.png``, ``0001_depth.png``, ``0001_label13.png``;
every id must have the same modalities. CSV layout: a header ``id,<modality>,...[,split]`` (the first column is
the id, whatever its name) with file paths relative to the CSV; an optional ``split`` column names each row's
split. Modalities are recognised by name:

- ``rgb`` / ``color`` / ``image``: colour, 8 or 16 bit (16-bit scaled to 8);
- ``depth``, ``raw_depth``: depth, converted to metres with ``--depth-scale`` (16-bit PNG default: millimetres);
  ``depth`` holes (0) stay 0;
- ``label*`` / ``seg*``: segmentation, stored as ``seg<suffix>`` (``label13`` -> ``seg13``); by default the
  NYU convention (0 = void, 1..K = classes, stored as 0..K-1 with void -> 255), ``--label-base 0`` for files
  whose values already are class ids with 255 as void;
- anything else (``thermal``, ``normals`` ...): stored as is, with its own name.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
from collections import defaultdict

import numpy as np

from crossmodal.data.format import DEFAULT_IGNORE_INDEX, PairedWriter
from crossmodal.errors import DataError
from data_prep.common import (add_common_arguments, checked_size, progress, read_image, resize_image,
                              resize_nearest, to_rgb8)

NAME = "pairs"
HELP = "a folder of <id>_<modality>.png files, or a CSV index of them"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
COLOR_NAMES = ("rgb", "color", "image")
DEPTH_NAMES = ("depth", "raw_depth")
FILE_PATTERN = re.compile(r"^(?P<id>[^_]+)_(?P<modality>.+)\.(?P<ext>[A-Za-z]+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="DIR_OR_CSV", help="the folder of pairs, or a CSV index")
    parser.add_argument("--depth-scale", type=float, default=None, metavar="S",
                        help="metres per depth unit (default: 0.001 for 16-bit PNG millimetres; "
                             "required for 8-bit depth)")
    parser.add_argument("--label-base", type=int, choices=(0, 1), default=1,
                        help="1: label value 0 is void, 1..K are the classes (NYU); 0: values are class ids, "
                             "255 is void (default 1)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes per segmentation set (default: the largest class id seen + 1)")
    parser.add_argument("--class-names", metavar="FILE", help="a text file with one class name per line")
    parser.add_argument("--split", default="train", help="the split of every row without a split column")
    add_common_arguments(parser)


def _kind(modality: str) -> str:
    if modality in COLOR_NAMES:
        return "rgb"
    if modality in DEPTH_NAMES:
        return modality
    if modality.startswith(("label", "seg")):
        return "segmentation"
    return "other"


def _stored_name(modality: str) -> str:
    if _kind(modality) == "rgb":
        return "rgb"
    if _kind(modality) == "segmentation":
        return "seg" + re.sub(r"^(label|seg)_?", "", modality)
    return modality


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def index_pairs(src: str, default_split: str) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[str]]:
    """(ids, modalities, files[id][modality], split per id) from a folder or a CSV index."""
    if os.path.isfile(src):
        return _index_csv(src)
    if not os.path.isdir(src):
        raise DataError(src, "no such folder or CSV file")
    files: dict[str, dict[str, str]] = defaultdict(dict)
    for name in sorted(os.listdir(src)):
        match = FILE_PATTERN.match(name)
        if match and name.lower().endswith(EXTENSIONS):
            files[match["id"]][match["modality"]] = os.path.join(src, name)
    if not files:
        raise DataError(src, "no <id>_<modality> image files found (e.g. 0001_rgb.png, 0001_depth.png)")
    modalities = sorted(set().union(*(set(entry) for entry in files.values())))
    for sample_id, entry in files.items():
        missing = [m for m in modalities if m not in entry]
        if missing:
            raise DataError(src, f"sample '{sample_id}' lacks {missing} (every id needs the same modalities)")
    ids = sorted(files, key=_natural_key)
    return ids, modalities, files, [default_split] * len(ids)


def _index_csv(path: str) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[str]]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not header or len(header) < 2:
        raise DataError(path, "needs a header: id,<modality>,... (e.g. frame,rgb,depth,label13)")
    header = [cell.strip() for cell in header]
    modalities = [column for column in header[1:] if column != "split"]
    root = os.path.dirname(os.path.abspath(path))
    ids, files, splits = [], {}, []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(path, f"line {line} has {len(row)} fields, the header {len(header)}")
        record = dict(zip(header, (cell.strip() for cell in row)))
        sample_id = record[header[0]]
        if sample_id in files:
            raise DataError(path, f"line {line}: id '{sample_id}' appears twice")
        ids.append(sample_id)
        files[sample_id] = {m: os.path.join(root, record[m]) for m in modalities}
        splits.append(record.get("split", "train") or "train")
    if not ids:
        raise DataError(path, "lists no samples")
    return ids, modalities, files, splits


def run(args: argparse.Namespace) -> None:
    convert(args.src, args.out, size=checked_size(args.size), overwrite=args.overwrite,
            compression=args.compression, depth_scale=args.depth_scale, label_base=args.label_base,
            num_classes=args.num_classes, class_names_file=args.class_names, split=args.split)


def convert(src: str, out: str, size: tuple[int, int] | None = None, overwrite: bool = False,
            compression: str = "lzf", depth_scale: float | None = None, label_base: int = 1,
            num_classes: int | None = None, class_names_file: str | None = None, split: str = "train") -> None:
    """Convert a folder or CSV index of paired image files (see the module docstring)."""
    ids, modalities, files, splits = index_pairs(src, split)
    stored = {m: _stored_name(m) for m in modalities}
    if len(set(stored.values())) != len(stored):
        raise DataError(src, f"modalities {modalities} map onto the same stored name")
    first = {m: _convert_file(files[ids[0]][m], m, depth_scale, label_base) for m in modalities}
    shapes = {m: array.shape for m, array in first.items()}
    height, width = size or next(iter(shapes.values()))[:2]
    for m, shape in shapes.items():
        if shape[:2] != next(iter(shapes.values()))[:2]:
            raise DataError(files[ids[0]][m], f"is {shape[1]}x{shape[0]}, its pair differs: modalities must align")

    segmentation = [m for m in modalities if _kind(m) == "segmentation"]
    names = _class_names(class_names_file, segmentation, files, ids, depth_scale, label_base, num_classes)
    options = {"size": size, "depth_scale": depth_scale, "label_base": label_base, "num_classes": num_classes}
    with PairedWriter(out, len(ids), source=os.path.abspath(src), converter=f"data_prep.{NAME}",
                      options=options, overwrite=overwrite,
                          compression=compression) as writer:
        for m in modalities:
            kind, shape = _kind(m), shapes[m]
            if kind == "segmentation":
                writer.add_segmentation(stored[m], height, width, names[m])
            else:
                units = {"rgb": "sRGB 0-255", "depth": "m", "raw_depth": "m"}.get(kind, "")
                channels = shape[2] if len(shape) == 3 else 1
                writer.add_modality(stored[m], height, width, channels, first[m].dtype, kind=kind, units=units)
        for row, sample_id in enumerate(progress(ids, len(ids), "pairs")):
            arrays = first if row == 0 else {
                m: _convert_file(files[sample_id][m], m, depth_scale, label_base) for m in modalities}
            values = {}
            for m, array in arrays.items():
                if array.shape != shapes[m]:
                    raise DataError(files[sample_id][m], f"has shape {array.shape}, the first sample {shapes[m]}")
                if _kind(m) == "segmentation" and array[array != DEFAULT_IGNORE_INDEX].max(initial=0) >= len(names[m]):
                    raise DataError(files[sample_id][m], f"has a class id >= {len(names[m])} (--num-classes)")
                resize = resize_image if _kind(m) in ("rgb", "other") else resize_nearest
                values[stored[m]] = resize(array, size)
            writer.write(row, **values)
        for name in sorted(set(splits)):
            writer.add_split(name, [row for row, s in enumerate(splits) if s == name])


def _convert_file(path: str, modality: str, depth_scale: float | None, label_base: int) -> np.ndarray:
    image = read_image(path)
    kind = _kind(modality)
    if kind == "rgb":
        return to_rgb8(image, path)
    if kind in DEPTH_NAMES:
        if image.ndim != 2:
            raise DataError(path, f"depth must be a single-channel image, found shape {image.shape}")
        scale = depth_scale
        if scale is None:
            if image.dtype != np.uint16:
                raise DataError(path, f"{image.dtype} depth needs --depth-scale (metres per unit)")
            scale = 0.001
        return (image.astype(np.float32) * np.float32(scale))[..., None]
    if kind == "segmentation":
        if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
            raise DataError(path, f"labels must be a single-channel 8/16-bit image, found {image.shape} {image.dtype}")
        if label_base == 0:
            return image.astype(np.uint8) if image.max() <= 255 else _too_many(path)
        labels = image.astype(np.int64) - 1
        labels[image == 0] = DEFAULT_IGNORE_INDEX
        return labels.astype(np.uint8) if labels.max() <= 255 else _too_many(path)
    return image if image.ndim == 3 else image[..., None]


def _too_many(path: str) -> np.ndarray:
    raise DataError(path, "label ids above 254 are not supported (segmentation is stored as uint8)")


def _class_names(names_file: str | None, segmentation: list[str], files: dict, ids: list[str],
                 depth_scale: float | None, label_base: int, num_classes: int | None) -> dict[str, list[str]]:
    """Class names per segmentation modality: from --class-names, else class_<i> for 0..K-1."""
    if not segmentation:
        return {}
    if names_file:
        if not os.path.isfile(names_file):
            raise DataError(names_file, "no such file")
        with open(names_file) as handle:
            listed = [line.strip() for line in handle if line.strip()]
        if num_classes is not None and num_classes != len(listed):
            raise DataError(names_file, f"lists {len(listed)} names, --num-classes says {num_classes}")
        return {m: listed for m in segmentation}
    names = {}
    for m in segmentation:
        count = num_classes
        if count is None:
            largest = 0
            for sample_id in ids:
                labels = _convert_file(files[sample_id][m], m, depth_scale, label_base)
                largest = max(largest, int(labels[labels != DEFAULT_IGNORE_INDEX].max(initial=0)))
            count = largest + 1
        names[m] = [f"class_{i}" for i in range(count)]
    return names
