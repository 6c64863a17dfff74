"""The paired-modality HDF5 format (version 2, reads version 1): its layout and a validating reader (the writer is
:mod:`crossmodal.data.paired_writer`).

The full description is in ``docs/format.md``. In short::

    /                       attrs: format="crossmodal-paired", format_version=2, num_samples=N, provenance
    /modalities/<name>      (N, H, W, C) uint8|uint16|float16|float32, one chunk per sample, a codec
                            (Blosc LZ4 by default, see :mod:`crossmodal.data.codecs`) and a fletcher32 checksum
                            attrs: kind, units, value_range=[min, max], scale (physical = stored * scale;
                            depth is uint16 millimetres, scale 0.001), clipped, nonfinite
    /labels/<name>          class: (N,) int, -1 = no label;  segmentation: (N, H, W) uint8|uint16
                            attrs: type, num_classes, class_names, ignore_index (segmentation)
    /splits/<name>          (M,) int64 row indices into 0..N-1
    /crc32/<group>/<name>   (rows,) uint32: each row's CRC-32 (root attr row_checksum="crc32"; older files have
                            none), checked on every read: see :mod:`crossmodal.data.integrity`
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from crossmodal.data import integrity
from crossmodal.data.codecs import CODECS, describe, missing_filter
from crossmodal.errors import DataError

FORMAT_NAME = "crossmodal-paired"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MODALITY_DTYPES = (np.uint8, np.uint16, np.float16, np.float32)
SEGMENTATION_DTYPES = (np.uint8, np.uint16)
LABEL_TYPES = ("class", "segmentation")
DEFAULT_IGNORE_INDEX = 255
COMPRESSIONS = tuple(CODECS)
DEPTH_KINDS = ("depth", "raw_depth")
# How version 2 stores depth given in metres: "uint16" millimetres (the sensors' own resolution), or floats.
DEPTH_STORAGE = {"uint16": (np.uint16, 0.001), "float16": (np.float16, None), "float32": (np.float32, None)}
PROVENANCE_KEYS = ("source", "converter", "converter_version", "created", "options")


@dataclass(frozen=True)
class ModalityInfo:
    """One stored modality: an (N, H, W, C) array."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    kind: str
    units: str
    value_range: tuple[float, float] | None
    scale: float | None = None
    codec: str = "none"
    checksum: bool = False
    clipped: int = 0
    nonfinite: int = 0


@dataclass(frozen=True)
class LabelInfo:
    """One label set: image-level classes (N,) or dense segmentation (N, H, W)."""

    name: str
    type: str
    shape: tuple[int, ...]
    dtype: np.dtype
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int | None = None


@dataclass(frozen=True)
class Layout:
    """Everything about a paired file except its bulk pixel values; built by :func:`read_layout`."""

    path: str
    format_version: int
    num_samples: int
    modalities: dict[str, ModalityInfo]
    labels: dict[str, LabelInfo]
    splits: dict[str, int]
    provenance: dict[str, Any] = field(default_factory=dict)
    row_crc32: bool = False  # whether every row carries a CRC-32 (files written before them do not)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(_text(v) for v in np.atleast_1d(value))


def read_layout(path: str | os.PathLike, check_rows: bool = True) -> Layout:
    """Open ``path``, check it is a well-formed paired file and return its layout.

    Image-level classes and splits are read whole (their values are checked), each row against its CRC-32
    when the file has them; ``check_rows=False`` leaves a damaged one to the caller (``inspect --verify``, which
    lists every damaged row instead of stopping at the first).

    Raises:
        DataError: naming the file and the first problem found (a damaged row: the dataset and the row).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(path, "no such file")
    if not os.path.isfile(path):
        raise DataError(path, "not a file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(path, f"not a readable HDF5 file (truncated or another format): {err}") from None
    try:
        with handle:
            return _read_layout(path, handle, check_rows)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(path, f"damaged or malformed file: {err}") from None


def _read_layout(path: str, handle: h5py.File, check_rows: bool) -> Layout:
    attrs = handle.attrs
    if _text(attrs.get("format", "")) != FORMAT_NAME:
        raise DataError(path, f"not a {FORMAT_NAME} file (root attribute 'format' is missing or different)")
    version = int(attrs.get("format_version", -1))
    if version not in SUPPORTED_VERSIONS:
        raise DataError(path, f"unknown format version {version} (this crossmodal reads {SUPPORTED_VERSIONS})")
    num_samples = int(attrs.get("num_samples", -1))
    if num_samples < 0:
        raise DataError(path, "root attribute 'num_samples' is missing")

    for group in ("modalities", "labels", "splits"):
        if group in handle and not isinstance(handle[group], h5py.Group):
            raise DataError(path, f"'/{group}' must be a group, found {_describe(handle[group])}")
    modalities: dict[str, ModalityInfo] = {}
    for name, dset in handle.get("modalities", {}).items():
        where = f"modality '{name}'"
        if not isinstance(dset, h5py.Dataset) or dset.ndim != 4:
            raise DataError(path, f"{where} must be an (N, H, W, C) dataset, found {_describe(dset)}")
        if dset.shape[0] != num_samples:
            raise DataError(path, f"{where} has {dset.shape[0]} samples, the file has {num_samples}")
        if dset.dtype not in MODALITY_DTYPES:
            raise DataError(path, f"{where} has dtype {dset.dtype}, expected one of "
                                  f"{[np.dtype(d).name for d in MODALITY_DTYPES]}")
        _check_filters(path, where, dset)
        value_range = dset.attrs.get("value_range")
        scale = dset.attrs.get("scale")
        if scale is not None and not (np.isfinite(scale) and float(scale) > 0):
            raise DataError(path, f"{where} has scale {scale}; it must be a positive number")
        codec, checksum = describe(dset)
        modalities[name] = ModalityInfo(
            name=name, shape=tuple(dset.shape), dtype=dset.dtype,
            kind=_text(dset.attrs.get("kind", "unknown")), units=_text(dset.attrs.get("units", "")),
            value_range=None if value_range is None else (float(value_range[0]), float(value_range[1])),
            scale=None if scale is None else float(scale), codec=codec, checksum=checksum,
            clipped=int(dset.attrs.get("clipped", 0)), nonfinite=int(dset.attrs.get("nonfinite", 0)))
    if not modalities:
        raise DataError(path, "the file stores no modality (group /modalities is empty or missing)")

    labels: dict[str, LabelInfo] = {}
    for name, dset in handle.get("labels", {}).items():
        labels[name] = _check_label(path, name, dset, num_samples, _reader(path, handle, check_rows))

    splits: dict[str, int] = {}
    for name, dset in handle.get("splits", {}).items():
        if not (isinstance(dset, h5py.Dataset) and dset.ndim == 1 and np.issubdtype(dset.dtype, np.integer)):
            raise DataError(path, f"split '{name}' must be a 1-D integer index array, found {_describe(dset)}")
        indices = _reader(path, handle, check_rows)(f"splits/{name}")
        if indices is None:
            splits[name] = int(dset.shape[0])
            continue
        if indices.size and (indices.min() < 0 or indices.max() >= num_samples):
            raise DataError(path, f"split '{name}' has an index out of range "
                                  f"[{indices.min()}, {indices.max()}] for {num_samples} samples")
        if np.unique(indices).size != indices.size:
            raise DataError(path, f"split '{name}' lists a sample more than once")
        splits[name] = int(indices.size)

    integrity.require_row_crcs(path, handle)
    sizes = {name: info.shape[1:3] for name, info in modalities.items()}
    sizes.update({name: info.shape[1:3] for name, info in labels.items() if info.type == "segmentation"})
    if len(set(sizes.values())) > 1:
        raise DataError(path, f"modalities and label maps must share one height x width, found {sizes}")

    provenance = {key: _text(attrs[key]) for key in PROVENANCE_KEYS if key in attrs}
    if "options" in provenance:
        try:
            provenance["options"] = json.loads(provenance["options"])
        except json.JSONDecodeError:
            pass
    return Layout(path, version, num_samples, modalities, labels, splits, provenance,
                  integrity.has_row_crcs(handle))


def _reader(path: str, handle: h5py.File, check_rows: bool):
    """Reads a 1-D dataset whole, checked row by row: a damaged one raises, or with ``check_rows=False`` reads
    as None (its values are then not checked: ``inspect --verify`` lists the damaged rows instead)."""
    def read(key: str) -> np.ndarray | None:
        try:
            return integrity.read_checked(path, handle, key)
        except DataError:
            if check_rows:
                raise
            return None
    return read


def _check_filters(path: str, where: str, dset: h5py.Dataset) -> None:
    missing = missing_filter(dset)
    if missing:
        raise DataError(path, f"{where} is compressed with {missing}, which this Python's HDF5 cannot decode: "
                              f"install hdf5plugin (pip install hdf5plugin) and import it before h5py opens the file")


def _check_label(path: str, name: str, dset: Any, num_samples: int, read: Any) -> LabelInfo:
    where = f"label set '{name}'"
    if not isinstance(dset, h5py.Dataset):
        raise DataError(path, f"{where} is not a dataset")
    _check_filters(path, where, dset)
    label_type = _text(dset.attrs.get("type", ""))
    if label_type not in LABEL_TYPES:
        raise DataError(path, f"{where} has type '{label_type}', expected one of {LABEL_TYPES}")
    expected_ndim = 1 if label_type == "class" else 3
    if dset.ndim != expected_ndim:
        raise DataError(path, f"{where} ({label_type}) must have {expected_ndim} dimensions, found {dset.shape}")
    if dset.shape[0] != num_samples:
        raise DataError(path, f"{where} has {dset.shape[0]} samples, the file has {num_samples}")
    allowed = SEGMENTATION_DTYPES if label_type == "segmentation" else None
    if not np.issubdtype(dset.dtype, np.integer) or (allowed and dset.dtype not in allowed):
        raise DataError(path, f"{where} has dtype {dset.dtype}, expected an integer type")
    if "num_classes" not in dset.attrs:
        raise DataError(path, f"{where} lacks the attribute 'num_classes'")
    num_classes = int(dset.attrs["num_classes"])
    class_names = _names(dset.attrs.get("class_names", [f"class_{i}" for i in range(num_classes)]))
    if len(class_names) != num_classes:
        raise DataError(path, f"{where} has {len(class_names)} class names for {num_classes} classes")
    ignore_index = None
    if label_type == "segmentation":
        ignore_index = int(dset.attrs.get("ignore_index", DEFAULT_IGNORE_INDEX))
    else:
        values = read(f"labels/{name}")
        if values is not None and values.size and (values.min() < -1 or values.max() >= num_classes):
            raise DataError(path, f"{where} has a class id out of range [-1, {num_classes - 1}]: "
                                  f"[{values.min()}, {values.max()}]")
    return LabelInfo(name, label_type, tuple(dset.shape), dset.dtype, num_classes, class_names, ignore_index)


def _describe(obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        return f"shape {obj.shape} dtype {obj.dtype}"
    return type(obj).__name__
