"""NYU-Depth V2, the official labelled file (``nyu_depth_v2_labeled.mat``, MATLAB v7.3 = HDF5) -> paired file.

As h5py sees the file (MATLAB stores column-major, so each frame is transposed back to 480 x 640)::

    images     (1449, 3, 640, 480) uint8      depths   (1449, 640, 480) float32, metres, filled
    rawDepths  (1449, 640, 480) float32, 0 = hole       labels   (1449, 640, 480) uint16, 0 = void, 1..894
    sceneTypes (1, 1449) references to MATLAB char arrays (uint16 code units)

The metadata folder (``--meta``) holds ``splits.mat`` (1-based ``trainNdxs``, ``testNdxs``),
``classMapping40.mat`` (``mapClass`` 894 -> 40, ``className``) and ``class13Mapping.mat``
(``classMapping13.labels13`` 40 -> 13, ``classMapping13.classNames``).

References:
    - [0] Silberman et al., Indoor Segmentation and Support Inference from RGBD Images, ECCV 2012
    - [1] Gupta et al., Perceptual Organization and Recognition of Indoor Scenes from RGB-D Images, CVPR 2013
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import h5py
import numpy as np
import scipy.io

from crossmodal.data.codecs import DEFAULT_CODEC
from crossmodal.data.format import DEFAULT_IGNORE_INDEX
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep.common import add_common_arguments, checked_size, resize_image, resize_nearest
from crossmodal.progress import sample_bar
from crossmodal.errors import DataError

NAME = "nyu"
HELP = "the official labelled NYU-Depth V2 .mat file (v7.3) with the split / class-map metadata"
REQUIRED = ("images", "depths", "labels")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat")
    parser.add_argument("--meta", required=True, metavar="DIR",
                        help="folder with splits.mat, classMapping40.mat, class13Mapping.mat")
    add_common_arguments(parser)


def _loadmat(meta: str, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    path = os.path.join(meta, name)
    if not os.path.isfile(path):
        raise DataError(path, "no such file (the NYU metadata folder must hold it)")
    try:
        content = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several unrelated types for a bad file
        raise DataError(path, f"not a readable MATLAB file: {err}") from None
    missing = [key for key in keys if key not in content]
    if missing:
        raise DataError(path, f"missing variable(s) {missing}")
    return content


def _strings(cells: np.ndarray) -> list[str]:
    return [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(cells).ravel()]


def load_metadata(meta: str) -> dict[str, Any]:
    """Splits (0-based) and the raw -> 40 -> 13 lookup tables (void -> the ignore index)."""
    splits = _loadmat(meta, "splits.mat", ("trainNdxs", "testNdxs"))
    map40 = _loadmat(meta, "classMapping40.mat", ("mapClass", "className"))
    map13_file = _loadmat(meta, "class13Mapping.mat", ("classMapping13",))
    try:
        map13 = map13_file["classMapping13"][0, 0]
        labels13, names13 = np.asarray(map13["labels13"]).ravel(), _strings(map13["classNames"])
    except (KeyError, ValueError, IndexError):
        raise DataError(os.path.join(meta, "class13Mapping.mat"),
                        "classMapping13 lacks the fields labels13 / classNames") from None
    names40 = _strings(map40["className"])
    raw_to_40 = np.asarray(map40["mapClass"]).ravel().astype(np.int64)
    if len(names40) != 40 or raw_to_40.min() < 1 or raw_to_40.max() > 40 or len(labels13) != 40:
        raise DataError(meta, "class maps are not 894 -> 40 -> 13 (unexpected sizes or values)")
    lut40 = np.full(len(raw_to_40) + 1, DEFAULT_IGNORE_INDEX, np.uint8)
    lut40[1:] = raw_to_40 - 1
    lut13 = np.full_like(lut40, DEFAULT_IGNORE_INDEX)
    lut13[1:] = labels13.astype(np.int64)[raw_to_40 - 1] - 1
    return {"train": splits["trainNdxs"].ravel().astype(np.int64) - 1,
            "test": splits["testNdxs"].ravel().astype(np.int64) - 1,
            "lut40": lut40, "lut13": lut13, "names40": names40, "names13": names13}


def _matlab_string(handle: h5py.File, ref: Any) -> str:
    return "".join(map(chr, np.asarray(handle[ref][()]).ravel()))


def run(args: argparse.Namespace) -> None:
    convert(args.mat, args.meta, args.out, size=checked_size(args.size), overwrite=args.overwrite,
            compression=args.compression, depth_storage=args.depth_storage)


def convert(mat: str, meta: str, out: str, size: tuple[int, int] | None = None, overwrite: bool = False,
            compression: str = DEFAULT_CODEC, depth_storage: str = "uint16") -> None:
    """Convert the labelled NYU-Depth V2 file; see the module docstring for the layout it expects."""
    metadata = load_metadata(meta)
    if not os.path.isfile(mat):
        raise DataError(mat, "no such file")
    if not h5py.is_hdf5(mat):
        raise DataError(mat, "not a MATLAB v7.3 (HDF5) file; the labelled NYU-Depth V2 file is one")
    with h5py.File(mat, "r") as source:
        missing = [key for key in REQUIRED if not isinstance(source.get(key), h5py.Dataset)]
        if missing:
            raise DataError(mat, f"missing dataset(s) {missing}: is this nyu_depth_v2_labeled.mat?")
        if not np.issubdtype(source["labels"].dtype, np.integer):
            raise DataError(mat, f"'labels' has dtype {source['labels'].dtype}, expected integer class ids")
        images, depths, labels = (source[key] for key in REQUIRED)
        raw_depths = source["rawDepths"] if "rawDepths" in source else None
        count = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(mat, f"'images' has shape {images.shape}, expected (N, 3, W, H)")
        width, height = images.shape[2:]
        for key in ("depths", "labels", "rawDepths"):
            if key in source and source[key].shape != (count, width, height):
                raise DataError(mat, f"'{key}' has shape {source[key].shape}, expected {(count, width, height)}")
        for split in ("train", "test"):
            if metadata[split].min() < 0 or metadata[split].max() >= count:
                raise DataError(os.path.join(meta, "splits.mat"), f"{split} indices exceed the {count} frames")
        scenes = None
        if "sceneTypes" in source:
            scenes = [_matlab_string(source, ref) for ref in np.asarray(source["sceneTypes"]).ravel()]
            if len(scenes) != count:
                raise DataError(mat, f"'sceneTypes' has {len(scenes)} entries for {count} frames")
        out_h, out_w = size or (height, width)
        options = {"size": size, "meta": os.path.abspath(meta)}
        with PairedWriter(out, count, source=os.path.abspath(mat), converter=f"data_prep.{NAME}",
                          options=options, overwrite=overwrite,
                          compression=compression, depth=depth_storage) as writer:
            writer.add_modality("rgb", out_h, out_w, 3, np.uint8, kind="rgb", units="sRGB 0-255")
            writer.add_modality("depth", out_h, out_w, 1, np.float32, kind="depth", units="m",
                                description="depth with holes filled (NYU's colorization in-painting)")
            if raw_depths is not None:
                writer.add_modality("raw_depth", out_h, out_w, 1, np.float32, kind="raw_depth", units="m",
                                    description="Kinect depth projected to the RGB camera, 0 = hole")
            writer.add_segmentation("seg40", out_h, out_w, metadata["names40"])
            writer.add_segmentation("seg13", out_h, out_w, metadata["names13"])
            lut40, lut13 = metadata["lut40"], metadata["lut13"]
            for index in sample_bar(range(count), count, "nyu"):
                raw_label = labels[index].T
                if raw_label.max() >= len(lut40):
                    raise DataError(mat, f"frame {index + 1}: label id {raw_label.max()} exceeds the class map")
                row = {"rgb": resize_image(np.ascontiguousarray(images[index].transpose(2, 1, 0)), size),
                       "depth": resize_nearest(depths[index].T.astype(np.float32), size),
                       "seg40": resize_nearest(lut40[raw_label], size),
                       "seg13": resize_nearest(lut13[raw_label], size)}
                if raw_depths is not None:
                    row["raw_depth"] = resize_nearest(raw_depths[index].T.astype(np.float32), size)
                writer.write(index, **row)
            if scenes is not None:
                scene_names = sorted(set(scenes))
                writer.add_class_labels("scene", [scene_names.index(s) for s in scenes], scene_names)
            writer.add_split("train", metadata["train"])
            writer.add_split("test", metadata["test"])
