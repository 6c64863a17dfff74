"""A folder (or a CSV index) of paired image files -> paired file.

Folder layout: ``<id>_<modality>.<ext>``, e.g. ``0001_rgb.png``, ``0001_depth.png``, ``0001_label13.png``;
every id must have the same modalities. CSV layout: a header ``id,<modality>,...[,split]`` (the first column is
the id, whatever its name) with file paths relative to the CSV; an optional ``split`` column names each row's
split. Without one, every pair goes to ``--split`` (default ``train``), or ``--test-fraction F`` divides the
pairs into ``train`` and ``test``: the pairs in file order (a folder's ids sorted, a CSV's rows as listed) are cut
into round(N*F) consecutive blocks and one pair of each block, drawn with ``--seed``, goes to ``test``, so the
test pairs spread over the whole source. Modalities are recognised by name:

- ``rgb`` / ``color`` / ``image``: colour, 8 or 16 bit (16-bit scaled to 8);
- ``depth``, ``raw_depth``: depth, converted to metres with ``--depth-scale`` (16-bit PNG default: millimetres);
  holes (0) stay 0, NaN and infinities become holes and are counted (``nonfinite``); a median distance outside
  1-8 m gets a warning naming the common unit that would fit (:mod:`crossmodal.data_prep.depth_units`);
- ``label*`` / ``seg*``: segmentation, stored as ``seg<suffix>`` (``label13`` -> ``seg13``); by default the
  NYU convention (0 = void, 1..K = classes, stored as 0..K-1 with void -> 255), ``--label-base 0`` for files
  whose values already are class ids with 255 as void. Without ``--class-names`` a class is named by its value
  in the files (``value_1`` is the pixels of value 1), and a line on stderr says how values map to classes;
- anything else (``thermal``, ``normals`` ...): stored as is, with its own name.

``--size H W`` resizes every sample, whatever its size: colour by area (bilinear when enlarging), depth and
labels by nearest neighbour, so no depth is blended across a hole and no class is invented at a boundary.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict

import numpy as np
from PIL import Image

from crossmodal.argtypes import positive_int
from crossmodal.data.codecs import DEFAULT_CODEC
from crossmodal.data.format import DEFAULT_IGNORE_INDEX, DEPTH_STORAGE
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep.common import (add_common_arguments, checked_size, read_image, resize_image,
                                         resize_nearest, to_rgb8)
from crossmodal.data_prep.depth_units import DepthMedian, implausible_depth
from crossmodal.progress import sample_bar
from crossmodal.errors import DataError

NAME = "pairs"
HELP = "a folder of <id>_<modality>.png files, or a CSV index of them"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
COLOR_NAMES = ("rgb", "color", "image")
DEPTH_NAMES = ("depth", "raw_depth")
FILE_PATTERN = re.compile(r"^(?P<id>[^_]+)_(?P<modality>.+)\.(?P<ext>[A-Za-z]+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="DIR_OR_CSV", help="the folder of pairs, or a CSV index")
    parser.add_argument("--depth-scale", type=float, default=None, metavar="S",
                        help="metres per depth unit (default: 0.001 for 16-bit PNG millimetres, as NYU, "
                             "ScanNet and most Kinect/RealSense PNGs; 0.0002 for TUM RGB-D; required for "
                             "8-bit and float depth). A median outside 1-8 m is warned about")
    parser.add_argument("--label-base", type=int, choices=(0, 1), default=1,
                        help="1: label value 0 is void, 1..K are the classes (NYU); 0: values are class ids, "
                             "255 is void (default 1)")
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="classes per segmentation set (default: the largest class id seen + 1)")
    parser.add_argument("--class-names", metavar="FILE",
                        help="a text file with one class name per line, in the order of the label values "
                             "(default: value_<v>, named by the value v in the files)")
    parser.add_argument("--split", default=None,
                        help="the split of every row without a split column (default train)")
    parser.add_argument("--test-fraction", type=float, default=None, metavar="F",
                        help="share of the pairs, in (0, 1), in a 'test' split, the rest in 'train': one pair of "
                             "each of round(N*F) consecutive blocks in file order (for a source without a split "
                             "column; default: every pair in --split)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the draw of the test pair within each block of --test-fraction (default 0)")
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


def index_pairs(src: str, default_split: str,
                test_fraction: float | None = None,
                seed: int = 0) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[str]]:
    """(ids, modalities, files[id][modality], split per id) from a folder or a CSV index; every file exists.

    With ``test_fraction``, a source without a split column gets ``train`` and ``test`` (:func:`draw_test_rows`).
    """
    if os.path.isfile(src):
        ids, modalities, files, splits = _index_csv(src, default_split, refuse_split_column=test_fraction is not None)
    elif os.path.isdir(src):
        ids, modalities, files, splits = _index_folder(src, default_split)
    else:
        raise DataError(src, "no such folder or CSV file")
    if test_fraction is not None:
        test = set(draw_test_rows(len(ids), test_fraction, seed, src).tolist())
        splits = ["test" if row in test else "train" for row in range(len(ids))]
    for sample_id in ids:  # before writing anything: a missing file is found now, not an hour in
        for modality, path in files[sample_id].items():
            if not os.path.isfile(path):
                raise DataError(path, f"no such file (sample '{sample_id}', modality '{modality}')")
    return ids, modalities, files, splits


def check_test_fraction(test_fraction: float | None, split: str | None) -> None:
    """--test-fraction is a number in (0, 1) and does not come with --split."""
    if test_fraction is None:
        return
    if not (math.isfinite(test_fraction) and 0 < test_fraction < 1):
        raise DataError("--test-fraction", f"must be a number in (0, 1), got {test_fraction}")
    if split is not None:
        raise DataError("--test-fraction", f"makes the splits train and test; it does not go with --split {split} "
                                           f"(drop one of them)")


def draw_test_rows(num: int, test_fraction: float, seed: int, src: str = "--test-fraction") -> np.ndarray:
    """The sorted rows of the test split: round(num * test_fraction) consecutive blocks of the rows in file order,
    one row drawn from each with ``seed`` (deterministic; the test rows spread over the whole source)."""
    num_test = int(round(num * test_fraction))
    if not 0 < num_test < num:
        raise DataError(src, f"--test-fraction {test_fraction} of {num} pairs leaves a split empty "
                             f"(each of train and test needs at least one pair)")
    bounds = (np.arange(num_test + 1) * num) // num_test  # block b: rows bounds[b] .. bounds[b + 1] - 1
    offsets = np.random.default_rng([seed, num]).random(num_test)
    return bounds[:-1] + (offsets * np.diff(bounds)).astype(np.int64)


def _index_folder(src: str, default_split: str) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[str]]:
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


def _index_csv(path: str, default_split: str,
               refuse_split_column: bool = False) -> tuple[list[str], list[str], dict[str, dict[str, str]], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(path, f"not a readable CSV text file: {err}") from None
    split_column = next((c for c in header[1:] if c.lower() == "split"), None)
    if split_column and refuse_split_column:
        raise DataError(path, f"has a '{split_column}' column: its rows name their splits already; drop "
                              f"--test-fraction or the column")
    modalities = [column for column in header[1:] if column != split_column]
    if not modalities or "" in header or len(set(header)) != len(header):
        raise DataError(path, f"needs a header id,<modality>,...[,split] with distinct names "
                              f"(e.g. frame,rgb,depth,label13), found {','.join(header)}")
    root = os.path.dirname(os.path.abspath(path))
    ids, files, splits = [], {}, []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(path, f"line {line} has {len(row)} fields, the header {len(header)}")
        record = dict(zip(header, (cell.strip() for cell in row)))
        sample_id = record[header[0]]
        if sample_id in files:
            raise DataError(path, f"line {line}: id '{sample_id}' appears twice")
        empty = [m for m in modalities if not record[m]]
        if empty:
            raise DataError(path, f"line {line}: no file given for {empty}")
        ids.append(sample_id)
        files[sample_id] = {m: os.path.join(root, record[m]) for m in modalities}
        splits.append((record[split_column] if split_column else "") or default_split)
    if not ids:
        raise DataError(path, "lists no samples")
    return ids, modalities, files, splits


def run(args: argparse.Namespace) -> None:
    convert(args.src, args.out, size=checked_size(args.size), overwrite=args.overwrite,
            compression=args.compression, depth_storage=args.depth_storage, depth_scale=args.depth_scale, label_base=args.label_base,
            num_classes=args.num_classes, class_names_file=args.class_names, split=args.split,
            test_fraction=args.test_fraction, seed=args.seed)


def convert(src: str, out: str, size: tuple[int, int] | None = None, overwrite: bool = False,
            compression: str = DEFAULT_CODEC, depth_storage: str = "uint16", depth_scale: float | None = None, label_base: int = 1,
            num_classes: int | None = None, class_names_file: str | None = None, split: str | None = None,
            test_fraction: float | None = None, seed: int = 0) -> None:
    """Convert a folder or CSV index of paired image files (see the module docstring).

    ``split``: the split of every row without a split column (None: ``train``); ``test_fraction``: instead,
    ``train`` and ``test`` (see :func:`draw_test_rows`), drawn with ``seed``. With ``size`` every sample is
    resized (its modalities must still align with each other); without it every sample has the first's size.
    """
    check_test_fraction(test_fraction, split)
    if depth_scale is not None and not (math.isfinite(depth_scale) and depth_scale > 0):
        raise DataError("--depth-scale", f"must be a positive number of metres per stored unit, got {depth_scale}")
    ids, modalities, files, splits = index_pairs(src, split or "train", test_fraction, seed)
    stored = {m: _stored_name(m) for m in modalities}
    if len(set(stored.values())) != len(stored):
        raise DataError(src, f"modalities {modalities} map onto the same stored name")
    first = {m: _convert_file(files[ids[0]][m], m, depth_scale, label_base) for m in modalities}
    shapes = {m: array.shape for m, array in first.items()}
    frame = _aligned_frame(first, files[ids[0]])
    height, width = size or frame
    print("pairs: " + ", ".join(f"{m} -> {stored[m]} ({KIND_WORDS[_kind(m)]})" for m in modalities),
          file=sys.stderr)
    segmentation = [m for m in modalities if _kind(m) == "segmentation"]
    listed = _listed_class_names(class_names_file, num_classes, label_base)
    largest = {m: -1 for m in segmentation}
    depths = {m: DepthMedian() for m in modalities if _kind(m) in DEPTH_NAMES}
    holes_made = {m: 0 for m in depths}  # NaN / inf written as holes
    scaled = DEPTH_STORAGE.get(depth_storage, (None, None))[1] is not None  # the writer counts its own holes
    options = {"size": size, "depth_scale": depth_scale, "label_base": label_base, "num_classes": num_classes,
               "test_fraction": test_fraction, "seed": seed if test_fraction is not None else None}
    with PairedWriter(out, len(ids), source=os.path.abspath(src), converter=f"data_prep.{NAME}",
                      options=options, overwrite=overwrite, compression=compression, depth=depth_storage) as writer:
        for m in modalities:
            if m in largest:
                writer.add_segmentation(stored[m], height, width, listed if listed is not None else [])
            else:
                units = {"rgb": "sRGB 0-255", "depth": "m", "raw_depth": "m"}.get(_kind(m), "")
                writer.add_modality(stored[m], height, width, shapes[m][2], first[m].dtype, kind=_kind(m),
                                    units=units)
        for row, sample_id in enumerate(sample_bar(ids, len(ids), "pairs")):
            arrays = first if row == 0 else {
                m: _convert_file(files[sample_id][m], m, depth_scale, label_base) for m in modalities}
            _aligned_frame(arrays, files[sample_id])
            for m, array in arrays.items():
                if array.shape[2:] != shapes[m][2:] or (size is None and array.shape != shapes[m]):
                    hint = "; pass --size H W to resize all" if array.shape[2:] == shapes[m][2:] else ""
                    raise DataError(files[sample_id][m], f"has shape {array.shape}, the first sample "
                                                         f"{shapes[m]}{hint}")
                if m in largest:
                    valid = array[array != DEFAULT_IGNORE_INDEX]
                    largest[m] = max(largest[m], int(valid.max()) if valid.size else -1)
                    if listed is not None and largest[m] >= len(listed):
                        raise DataError(files[sample_id][m], f"has class id {largest[m]}, beyond the "
                                                             f"{len(listed)} classes given")
                if m in depths:
                    depths[m].add(array)
                    holes_made[m] += int((~np.isfinite(array)).sum())
            writer.write(row, **{stored[m]: _resized(array, m, size, holes_by_writer=scaled)
                                 for m, array in arrays.items()})
        names = {}
        for m in segmentation:  # without given classes: as many as the largest id seen
            if listed is None and largest[m] < 0:
                raise DataError(src, f"every '{m}' pixel is void: no classes to store (pass --num-classes)")
            names[m] = listed if listed is not None else _value_names(largest[m] + 1, label_base)
            writer.set_class_names(stored[m], names[m])
        for name in sorted(set(splits)):
            writer.add_split(name, [row for row, s in enumerate(splits) if s == name])
    for m in segmentation:
        print(_label_mapping(m, stored[m], names[m], label_base, given=class_names_file is not None),
              file=sys.stderr)
    for m, median in depths.items():  # once the file is written: notes on the data, not errors
        if holes_made[m]:
            print(f"pairs: {m}: {holes_made[m]} NaN or infinite values written as holes (0)", file=sys.stderr)
        warning = implausible_depth(src, m, median.median(), 0.001 if depth_scale is None else depth_scale,
                                    default=depth_scale is None)
        if warning:
            print(f"crossmodal prepare: warning: {warning}", file=sys.stderr)


def _resized(array: np.ndarray, modality: str, size: tuple[int, int] | None, holes_by_writer: bool) -> np.ndarray:
    """One modality at ``size``: labels and depth by nearest neighbour (no class invented, no depth blended across
    a hole), depth's NaN and infinities made holes unless the writer makes (and counts) them as scaled integers."""
    kind = _kind(modality)
    if kind in DEPTH_NAMES and not holes_by_writer:
        array = np.where(np.isfinite(array), array, np.float32(0))
    return (resize_nearest if kind == "segmentation" or kind in DEPTH_NAMES else resize_image)(array, size)


def _aligned_frame(arrays: dict[str, np.ndarray], paths: dict[str, str]) -> tuple[int, int]:
    """The (height, width) that every modality of one sample shares; an error naming the one that differs."""
    (anchor, array), *others = arrays.items()
    frame = array.shape[:2]
    for m, other in others:
        if other.shape[:2] != frame:
            raise DataError(paths[m], f"is {other.shape[1]}x{other.shape[0]}, its pair "
                                      f"{os.path.basename(paths[anchor])} {frame[1]}x{frame[0]}: "
                                      f"modalities must align")
    return frame


def _value_names(num_classes: int, label_base: int) -> list[str]:
    """Classes named by the value that marks them in the label files: ``value_1`` is a pixel of value 1."""
    return [f"value_{i + label_base}" for i in range(num_classes)]


def _label_mapping(modality: str, stored: str, names: list[str], label_base: int, given: bool) -> str:
    """One line saying which file value became which stored class id and name, and how to name them."""
    last = len(names) - 1
    line = (f"pairs: {modality} -> {stored}: file values {label_base}..{last + label_base} are classes 0..{last} "
            f"({'0' if label_base else '255'} is void), ")
    if given:
        return line + f"named '{names[0]}'..'{names[last]}' from --class-names"
    return line + (f"named {names[0]}..{names[last]}; --class-names FILE names them "
                   f"(one per line, in value order)")


def _listed_class_names(names_file: str | None, num_classes: int | None, label_base: int) -> list[str] | None:
    """Class names from --class-names, or value_<v> for --num-classes; None to count them from the labels."""
    if names_file:
        if not os.path.isfile(names_file):
            raise DataError(names_file, "no such file")
        with open(names_file) as handle:
            listed = [line.strip() for line in handle if line.strip()]
        if num_classes is not None and num_classes != len(listed):
            raise DataError(names_file, f"lists {len(listed)} names, --num-classes says {num_classes}")
        return listed
    return None if num_classes is None else _value_names(num_classes, label_base)


def _read_labels(path: str) -> np.ndarray:
    """A label image as class ids: palette PNGs give their indices (OpenCV would give their colours)."""
    try:
        with Image.open(path) as picture:
            labels = np.asarray(picture)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot decode the label image: {err}") from None
    if labels.ndim == 3 and labels.shape[2] >= 3 and (labels[..., :3] == labels[..., :1]).all():
        labels = labels[..., 0]  # grey stored as RGB
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise DataError(path, f"labels must be a single-channel (grey or palette) 8/16-bit image, found "
                              f"shape {labels.shape} {labels.dtype}")
    return labels


def _convert_file(path: str, modality: str, depth_scale: float | None, label_base: int) -> np.ndarray:
    kind = _kind(modality)
    if kind == "segmentation":
        image = _read_labels(path)
        if image.max() > 255:
            _too_many(path)
        if label_base == 0:  # 255 is void already
            return image.astype(np.uint8)
        labels = image.astype(np.int64) - 1  # ids 1..255 become 0..254
        labels[image == 0] = DEFAULT_IGNORE_INDEX
        return labels.astype(np.uint8)
    image = read_image(path)
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
        return (image.astype(np.float32) * np.float32(scale))[..., None]  # NaN / inf: holes, counted later
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    return image if image.ndim == 3 else image[..., None]


KIND_WORDS = {"rgb": "colour", "depth": "depth, m", "raw_depth": "depth with holes, m",
              "segmentation": "segmentation", "other": "stored as is"}


def _too_many(path: str) -> np.ndarray:
    raise DataError(path, "class ids above 254 are not supported (segmentation is stored as uint8, 255 = void)")
