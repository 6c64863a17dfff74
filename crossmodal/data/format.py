"""The paired-modality HDF5 format (version 2, reads version 1): its layout, a validating reader, and the writer.

The full description is in ``docs/format.md``. In short::

    /                       attrs: format="crossmodal-paired", format_version=2, num_samples=N, provenance
    /modalities/<name>      (N, H, W, C) uint8|uint16|float16|float32, one chunk per sample, a codec
                            (Blosc LZ4 by default, see :mod:`crossmodal.data.codecs`) and a fletcher32 checksum
                            attrs: kind, units, value_range=[min, max], scale (physical = stored * scale;
                            depth is uint16 millimetres, scale 0.001), clipped, nonfinite
    /labels/<name>          class: (N,) int, -1 = no label;  segmentation: (N, H, W) uint8|uint16
                            attrs: type, num_classes, class_names, ignore_index (segmentation)
    /splits/<name>          (M,) int64 row indices into 0..N-1
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from crossmodal.data.codecs import CODECS, DEFAULT_CODEC, dataset_filters, describe, missing_filter, quantize
from crossmodal.errors import DataError
from crossmodal.files import exclusive_lock, place_error, remove_stale_temporaries, temporary_name

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(_text(v) for v in np.atleast_1d(value))


def read_layout(path: str | os.PathLike) -> Layout:
    """Open ``path``, check it is a well-formed paired file and return its layout.

    Raises:
        DataError: naming the file and the first problem found.
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
            return _read_layout(path, handle)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(path, f"damaged or malformed file: {err}") from None


def _read_layout(path: str, handle: h5py.File) -> Layout:
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
        labels[name] = _check_label(path, name, dset, num_samples)

    splits: dict[str, int] = {}
    for name, dset in handle.get("splits", {}).items():
        indices = dset[()] if isinstance(dset, h5py.Dataset) else None
        if indices is None or indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise DataError(path, f"split '{name}' must be a 1-D integer index array, found {_describe(dset)}")
        if indices.size and (indices.min() < 0 or indices.max() >= num_samples):
            raise DataError(path, f"split '{name}' has an index out of range "
                                  f"[{indices.min()}, {indices.max()}] for {num_samples} samples")
        if np.unique(indices).size != indices.size:
            raise DataError(path, f"split '{name}' lists a sample more than once")
        splits[name] = int(indices.size)

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
    return Layout(path, version, num_samples, modalities, labels, splits, provenance)


def _check_filters(path: str, where: str, dset: h5py.Dataset) -> None:
    missing = missing_filter(dset)
    if missing:
        raise DataError(path, f"{where} is compressed with {missing}, which this Python's HDF5 cannot decode: "
                              f"install hdf5plugin (pip install hdf5plugin) and import it before h5py opens the file")


def _check_label(path: str, name: str, dset: Any, num_samples: int) -> LabelInfo:
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
        values = dset[()]
        if values.size and (values.min() < -1 or values.max() >= num_classes):
            raise DataError(path, f"{where} has a class id out of range [-1, {num_classes - 1}]: "
                                  f"[{values.min()}, {values.max()}]")
    return LabelInfo(name, label_type, tuple(dset.shape), dset.dtype, num_classes, class_names, ignore_index)


def _check_name(path: str | os.PathLike, what: str, name: str) -> None:
    """Names become HDF5 paths: they must be non-empty and free of '/'."""
    if not name or "/" in name or name in (".", ".."):
        raise DataError(path, f"{what} name '{name}' is not allowed (empty, or containing '/')")


def _describe(obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        return f"shape {obj.shape} dtype {obj.dtype}"
    return type(obj).__name__


class PairedWriter:
    """Writes a paired file atomically: to a hidden temporary name beside ``out``, renamed only when complete.

    An exception (including Ctrl-C) inside the ``with`` block removes the temporary file, so a failed or
    interrupted conversion never leaves anything at ``out``. The finished file is validated before the rename.

    Args:
        out: the final path.
        num_samples: N, the number of rows of every modality and label set.
        source: what was converted (a path or a generator description), for provenance.
        converter: the converter's name, e.g. ``"data_prep.nyu"``.
        options: the options the converter ran with, stored as JSON.
        overwrite: replace an existing ``out`` (otherwise it is an error).
        compression: a codec of :data:`crossmodal.data.codecs.CODECS`: ``"blosc-lz4"`` (the default),
            ``"blosc-zstd"``, ``"lzf"`` or ``"none"``; every chunk also gets a fletcher32 checksum. Readers
            need not know (``experiments/bench_data.py`` compares their speed).
        depth: how modalities of kind ``depth``/``raw_depth`` given in metres are stored: ``"uint16"``
            millimetres (the default; values beyond 65.535 m are clipped and NaNs become holes, both counted
            in the dataset's ``clipped``/``nonfinite`` attributes), ``"float16"`` or ``"float32"``.

    Examples:
        >>> with PairedWriter("pairs.h5", 2, source="demo", converter="doc") as writer:
        ...     writer.add_modality("rgb", 4, 4, 3, np.uint8, kind="rgb", units="srgb")
        ...     writer.write(0, rgb=np.zeros((4, 4, 3), np.uint8))
        ...     writer.write(1, rgb=np.ones((4, 4, 3), np.uint8))
        ...     writer.add_split("train", [0, 1])
    """

    def __init__(self, out: str | os.PathLike, num_samples: int, *, source: str, converter: str,
                 options: dict[str, Any] | None = None, overwrite: bool = False,
                 compression: str = DEFAULT_CODEC, depth: str = "uint16") -> None:
        try:
            self._filters = dataset_filters(compression)
        except KeyError as err:
            raise DataError(out, err.args[0]) from None
        if depth not in DEPTH_STORAGE:
            raise DataError(out, f"unknown depth storage '{depth}'; choose one of {', '.join(DEPTH_STORAGE)}")
        self._depth = depth
        self.out = Path(out)
        self.num_samples = int(num_samples)
        self.tmp = Path(temporary_name(self.out))
        if self.out.is_dir():
            raise DataError(self.out, "is a folder; --out takes the path of the .h5 file to write")
        if self.out.exists() and not overwrite:
            raise DataError(self.out, "already exists (pass --overwrite to replace it)")
        if not self.out.parent.is_dir():
            raise DataError(self.out, "its folder does not exist")
        if self.num_samples <= 0:
            raise DataError(self.out, "nothing to write: the source holds no samples")
        self._provenance = {"source": str(source), "converter": converter,
                            "options": json.dumps({**(options or {}), "compression": compression,
                                                   "depth_storage": depth},
                                                  sort_keys=True, default=str)}
        self._ranges: dict[str, list[float]] = {}
        self._scales: dict[str, float] = {}
        self._counts: dict[str, list[int]] = {}  # modality -> [clipped, non-finite] of scaled integers
        self._file: h5py.File | None = None

    def __enter__(self) -> "PairedWriter":
        from crossmodal import __version__
        # one writer per output: a second `prepare` of the same --out is refused instead of racing this one
        self._lock = exclusive_lock(self.out.parent / f".{self.out.name}.lock", self.out, "crossmodal prepare")
        self._lock.__enter__()
        remove_stale_temporaries(self.out)
        try:
            self._file = h5py.File(self.tmp, "w")
        except OSError as err:
            self._lock.__exit__(None, None, None)
            raise DataError(self.out, f"cannot write its temporary file {self.tmp.name} beside it: "
                                      f"{place_error(err) or ' '.join(str(err).split())[:200]}") from None
        attrs = self._file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["num_samples"] = self.num_samples
        attrs["converter_version"] = __version__
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in self._provenance.items():
            attrs[key] = value
        for group in ("modalities", "labels", "splits"):
            self._file.create_group(group)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        assert self._file is not None
        try:
            if exc_type is not None:
                self._discard()
                return
            with self._writing():
                for name, (low, high) in self._ranges.items():
                    self._file["modalities"][name].attrs["value_range"] = np.array([low, high], np.float64)
                for name, (clipped, nonfinite) in self._counts.items():
                    self._file["modalities"][name].attrs["clipped"] = clipped
                    self._file["modalities"][name].attrs["nonfinite"] = nonfinite
                self._file.close()
            if exc_type is None:
                try:
                    read_layout(self.tmp)
                except DataError as err:  # name the file the user asked for, not the temporary one
                    raise DataError(self.out, err.problem) from None
                os.replace(self.tmp, self.out)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
            self._lock.__exit__(None, None, None)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """HDF5 writes, flushed at the end so that a full disk or a vanished permission surfaces here (HDF5 would
        otherwise report it later, from h5py's clean-up, as "Exception ignored", and write on): one line naming
        the output, and the temporary file is discarded."""
        try:
            yield
            if self._file is not None and self._file.id.valid:
                self._file.flush()
        except OSError as err:
            self._discard()
            raise DataError(self.out, f"cannot write it: "
                                      f"{place_error(err) or ' '.join(str(err).split())[:200]}") from None

    def _discard(self) -> None:
        """Close the temporary file after a failure and remove it. It is truncated first: on a full disk HDF5
        needs room to close the file at all (closing without it crashes h5py at exit)."""
        try:
            os.truncate(self.tmp, 0)
        except OSError:
            pass
        try:
            if self._file is not None and self._file.id.valid:
                self._file.close()
        except OSError:
            pass
        if self.tmp.exists():
            self.tmp.unlink()

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("PairedWriter is used outside its 'with' block")
        return self._file

    def add_modality(self, name: str, height: int, width: int, channels: int, dtype: Any, *, kind: str,
                     units: str, description: str = "") -> None:
        """Declare an (N, H, W, C) modality; one chunk per sample, with the writer's codec and a checksum.

        Depth in metres (``kind`` depth or raw_depth, ``units`` m, a float ``dtype``) is written in the writer's
        ``depth`` storage: the arrays passed to :meth:`write` stay in metres either way.
        """
        _check_name(self.out, "modality", name)
        if np.dtype(dtype) not in MODALITY_DTYPES:
            raise DataError(self.out, f"modality '{name}' has dtype {np.dtype(dtype)}, the format stores "
                                      f"{[np.dtype(d).name for d in MODALITY_DTYPES]}")
        scale = None
        if kind in DEPTH_KINDS and units == "m" and np.dtype(dtype).kind == "f":
            dtype, scale = DEPTH_STORAGE[self._depth]
        dset = self.file["modalities"].create_dataset(
            name, shape=(self.num_samples, height, width, channels), dtype=dtype,
            chunks=(1, height, width, channels), **self._filters)
        dset.attrs["kind"] = kind
        dset.attrs["units"] = units
        if scale is not None:
            dset.attrs["scale"] = scale
            self._scales[name] = scale
            self._counts[name] = [0, 0]
        if description:
            dset.attrs["description"] = description
        self._ranges[name] = [np.inf, -np.inf]

    def add_class_labels(self, name: str, values: Iterable[int], class_names: Iterable[str]) -> None:
        """Store image-level classes (N,), -1 meaning no label."""
        _check_name(self.out, "label set", name)
        values = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64)
        class_names = [str(n) for n in class_names]
        if values.shape != (self.num_samples,):
            raise ValueError(f"label set '{name}' has shape {values.shape}, expected ({self.num_samples},)")
        with self._writing():
            dset = self.file["labels"].create_dataset(name, data=values, fletcher32=True)
        self._label_attrs(dset, "class", class_names)

    def set_class_names(self, name: str, class_names: Iterable[str]) -> None:
        """Set (or replace) the classes of a label set, e.g. once a converter has seen every label."""
        self._label_attrs(self.file["labels"][name], self.file["labels"][name].attrs["type"],
                          [str(n) for n in class_names])

    def add_segmentation(self, name: str, height: int, width: int, class_names: Iterable[str],
                         ignore_index: int = DEFAULT_IGNORE_INDEX, dtype: Any = np.uint8) -> None:
        """Declare dense labels (N, H, W): class ids 0..num_classes-1, ``ignore_index`` for void pixels."""
        _check_name(self.out, "label set", name)
        class_names = [str(n) for n in class_names]
        dset = self.file["labels"].create_dataset(
            name, shape=(self.num_samples, height, width), dtype=dtype, chunks=(1, height, width),
            fillvalue=ignore_index, **self._filters)
        self._label_attrs(dset, "segmentation", class_names)
        dset.attrs["ignore_index"] = ignore_index

    @staticmethod
    def _label_attrs(dset: h5py.Dataset, label_type: str, class_names: list[str]) -> None:
        dset.attrs["type"] = label_type
        dset.attrs["num_classes"] = len(class_names)
        dset.attrs["class_names"] = np.array(class_names, dtype=h5py.string_dtype())

    def write(self, row: int, **arrays: np.ndarray) -> None:
        """Write one sample's arrays by name (modalities HWC or HW; segmentation HW)."""
        self.write_batch(row, **{name: np.asarray(array)[None] for name, array in arrays.items()})

    def write_batch(self, start: int, **arrays: np.ndarray) -> None:
        """Write consecutive rows ``start .. start+len-1`` of each named array."""
        for name, batch in arrays.items():
            if name in self.file["modalities"]:
                dset = self.file["modalities"][name]
                if batch.ndim == 3:
                    batch = batch[..., None]
                if name in self._scales:
                    batch, clipped, nonfinite = quantize(batch, self._scales[name], dset.dtype)
                    self._counts[name][0] += clipped
                    self._counts[name][1] += nonfinite
                    finite = batch.astype(np.float64) * self._scales[name]
                else:
                    finite = batch[np.isfinite(batch)] if batch.dtype.kind == "f" else batch
                if finite.size:
                    bounds = self._ranges[name]
                    bounds[0] = min(bounds[0], float(finite.min()))
                    bounds[1] = max(bounds[1], float(finite.max()))
            elif name in self.file["labels"]:
                dset = self.file["labels"][name]
            else:
                raise KeyError(f"'{name}' was not declared with add_modality or add_segmentation")
            if batch.shape[1:] != dset.shape[1:]:
                raise ValueError(f"'{name}' rows have shape {batch.shape[1:]}, expected {dset.shape[1:]}")
            with self._writing():
                dset[start:start + len(batch)] = batch

    def add_split(self, name: str, indices: Iterable[int]) -> None:
        """Store a split as an index array of rows."""
        _check_name(self.out, "split", name)
        with self._writing():
            self.file["splits"].create_dataset(name, data=np.asarray(list(indices), dtype=np.int64),
                                               fletcher32=True)
