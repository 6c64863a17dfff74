"""Writing a paired file (:mod:`crossmodal.data.format`): atomically, locked against a second writer of the same
output, flushed per batch so that a full disk is one line, depth given in metres stored as the writer chooses."""
from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from crossmodal.checksums import row_crc32s
from crossmodal.data import integrity
from crossmodal.data.codecs import DEFAULT_CODEC, dataset_filters, quantize
from crossmodal.data.format import (DEFAULT_IGNORE_INDEX, DEPTH_KINDS, DEPTH_STORAGE, FORMAT_NAME, FORMAT_VERSION,
                                    MODALITY_DTYPES, read_layout)
from crossmodal.errors import DataError
from crossmodal.files import (abandon_hdf5, exclusive_lock, os_reason, refused_write, remove_stale_temporaries,
                              temporary_name)


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
        self._row_crcs: dict[str, np.ndarray] = {}  # "modalities/rgb" -> each row's CRC-32, stored at the end
        self._unwritten: dict[str, np.ndarray] = {}  # the rows not written yet (they hold the fill value)
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
                                      f"{os_reason(err)}") from None
        attrs = self._file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["num_samples"] = self.num_samples
        attrs[integrity.ROOT_ATTR] = integrity.ALGORITHM
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
                self._store_row_crcs()
                self._file.flush()  # a full disk fails here, in _writing, not in a close that cannot fail cleanly
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
        except Exception as err:  # HDF5's flush says RuntimeError("... errno = 28 ...") for a full disk
            refused = refused_write(err, self.out)
            if isinstance(err, DataError) or (refused is None and not isinstance(err, OSError)):
                raise
            self._discard()
            raise (refused or DataError(self.out, f"cannot write it: {os_reason(err)}")) from None

    def _discard(self) -> None:
        """Close the temporary file after a failure and remove it. Its closing writes go to memory
        (:func:`~crossmodal.files.abandon_hdf5`): on a full disk HDF5 could not close it at all, and h5py would
        crash at exit."""
        abandon_hdf5(self.tmp)
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
        self._track(dset)
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
            integrity.store_row_crcs(self.file, f"labels/{name}", row_crc32s(values))
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
        self._track(dset)
        self._label_attrs(dset, "segmentation", class_names)
        dset.attrs["ignore_index"] = ignore_index

    def _track(self, dset: h5py.Dataset) -> None:
        """Keep the row CRC-32s of a dataset written row by row, to store when the file is complete."""
        self._row_crcs[dset.name[1:]] = np.zeros(dset.shape[0], np.uint32)
        self._unwritten[dset.name[1:]] = np.ones(dset.shape[0], bool)

    def _store_row_crcs(self) -> None:
        """Store the row CRC-32s of the datasets written row by row; rows never written hold the fill value."""
        for key, crcs in self._row_crcs.items():
            dset = self.file[key]
            if self._unwritten[key].any():
                fill = np.full((1, *dset.shape[1:]), dset.fillvalue, dset.dtype)
                crcs[self._unwritten[key]] = row_crc32s(fill)[0]
            integrity.store_row_crcs(self.file, key, crcs)

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
            batch = _as_stored(batch, dset.dtype)  # so that the CRC-32s are of the very bytes HDF5 stores
            with self._writing():
                dset[start:start + len(batch)] = batch
            self._row_crcs[dset.name[1:]][start:start + len(batch)] = row_crc32s(batch)
            self._unwritten[dset.name[1:]][start:start + len(batch)] = False

    def add_split(self, name: str, indices: Iterable[int]) -> None:
        """Store a split as an index array of rows."""
        _check_name(self.out, "split", name)
        indices = np.asarray(list(indices), dtype=np.int64)
        with self._writing():
            self.file["splits"].create_dataset(name, data=indices, fletcher32=True)
            integrity.store_row_crcs(self.file, f"splits/{name}", row_crc32s(indices))


def _as_stored(batch: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``batch`` in the dataset's dtype, converted as HDF5 would: integers out of the type's range are clipped
    (numpy would wrap them around)."""
    batch = np.asarray(batch)
    if batch.dtype == dtype:
        return np.ascontiguousarray(batch)
    if np.dtype(dtype).kind in "iu" and batch.dtype.kind in "iuf":
        info = np.iinfo(dtype)
        batch = np.clip(batch, info.min, info.max)
    return np.ascontiguousarray(batch.astype(dtype))


def _check_name(path: str | os.PathLike, what: str, name: str) -> None:
    """Names become HDF5 paths: they must be non-empty and free of '/'."""
    if not name or "/" in name or name in (".", ".."):
        raise DataError(path, f"{what} name '{name}' is not allowed (empty, or containing '/')")
