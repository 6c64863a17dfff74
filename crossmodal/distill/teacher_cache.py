"""Teacher outputs computed once: an HDF5 cache, keyed by sample index, that lets training skip the teacher.

Valid only while the teacher sees every sample the same way: a frozen teacher on an unaugmented view. The
cache records what its contents depend on (the teacher's fingerprint, the data file, the split, the modality,
the transform), and anything that changed makes it rebuild, never be reused silently.

Every array is stored with HDF5's Fletcher-32 checksum on each chunk (a read of a damaged chunk fails) and the
CRC-32 of its whole contents as its ``crc32`` attribute (checked when the array is read into memory: it also
catches whole chunks zeroed together with their Fletcher-32 sums, which an all-zero chunk matches). A damaged
cache is rebuilt, never used; one written without checksums (before they existed) is rebuilt once.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from crossmodal.cache_key import data_parts, digest
from crossmodal.checksums import crc32 as _crc32
from crossmodal.data.dataset import PairedDataset, collate
from crossmodal.errors import ConfigError, DataError
from crossmodal.files import atomic_output, hdf5_output
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds
from crossmodal.models.teacher import FrozenTeacher

FORMAT = "crossmodal-teacher-cache/1"
# Caches up to this size are read into memory at load; larger ones are read per lookup from the file.
MEMORY_LIMIT_BYTES = 1 << 30
STAGE_DTYPES = ("float32", "float16")
CHECKSUM_ATTR = "crc32"  # each array's CRC-32, of its bytes in row order
CHECKSUM_SLAB_BYTES = 64 << 20  # rows read at a time to checksum an array after writing it


class TeacherFeatureCache:
    """A frozen teacher's outputs on every sample of a data set, looked up by sample ``index``.

    Row ``i`` of each stored array holds the outputs for the dataset item whose ``index`` is ``i``:
    ``embedding`` (N x D float32, always stored: it is small and keeps every lookup a valid
    :class:`EncoderOutput`), ``logits`` (N x classes float32, when ``needs.logits``) and ``stage_<s>``
    (N x C x H x W, for each ``s`` in ``needs.stages``; float32, or float16 with ``stage_dtype="float16"``,
    which halves the file and rounds values to about 3 significant digits).

    Build with :meth:`build_or_load`. A cache up to ``memory_limit_bytes`` is read into memory, and each
    array's checksums are verified on that read; a larger one is read from the file per lookup (h5py fancy
    indexing of the sorted unique indices), opened once per process and never pickled, and a damaged chunk met
    by a lookup fails its Fletcher-32 checksum (a :class:`DataError`).

    The in-memory arrays live on the device of the lookups: the first lookup with indices on an accelerator
    (or :meth:`to`) moves them there, and from then on a lookup is an ``index_select`` per array on that device,
    with no host read (a training step does not wait for the device). Indices on the CPU are range-checked;
    indices on an accelerator are not (that check would wait), and one out of range fails in ``index_select``.

    Args:
        path: the cache file.
        needs: the outputs :meth:`lookup` returns.
        num_stages: the teacher's stage count (the length of a lookup's ``features``).
        key: the content key the file was built for.
        memory_limit_bytes: read the needed arrays into memory when they total at most this.

    Raises:
        DataError: an array read into memory fails its checksum ("damaged: ...").
        OSError: the file cannot be read.

    Examples:
        >>> cache = TeacherFeatureCache.build_or_load("runs/x/teacher_rgb.h5", teacher, data, "rgb",
        ...                                           TeacherNeeds(stages=frozenset({4}), embedding=True))
        >>> teacher_out = cache.lookup(batch["index"].to(device))  # instead of teacher(batch["rgb"])
    """

    def __init__(self, path: str | os.PathLike, needs: TeacherNeeds, num_stages: int, key: str,
                 memory_limit_bytes: int = MEMORY_LIMIT_BYTES) -> None:
        self.path = os.fspath(path)
        self.needs = needs
        self.num_stages = int(num_stages)
        self.key = key
        self.names = _array_names(needs)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._memory: dict[str, torch.Tensor] | None = None  # the arrays when held in memory, all on one device
        with h5py.File(self.path, "r") as handle:
            self.num_samples = int(handle["embedding"].shape[0])
            size = sum(handle[name].size * handle[name].dtype.itemsize for name in self.names)
            if size <= memory_limit_bytes:
                self._memory = {name: torch.from_numpy(_read_verified(handle, name, self.path))
                                for name in self.names}

    def __len__(self) -> int:
        return self.num_samples

    @classmethod
    def build_or_load(cls, path: str | os.PathLike, teacher: FrozenTeacher, dataset: PairedDataset,
                      modality: str, needs: TeacherNeeds, batch_size: int = 64, num_workers: int = 0,
                      progress: bool = True, stage_dtype: str = "float32",
                      memory_limit_bytes: int = MEMORY_LIMIT_BYTES) -> "TeacherFeatureCache":
        """Reuse the cache at ``path`` if it was built for exactly this teacher, data and view, else (re)build it.

        A cache built for more outputs than ``needs`` is reused; one that lacks some is rebuilt with both sets.
        A stale, unreadable, damaged (an array fails its checksum) or incomplete file, or one written without
        checksums, is rebuilt, with one line on stderr saying why. The file is written under a temporary name in
        the same folder and renamed into place when complete.

        Args:
            path: the cache file (``.h5``).
            teacher: the frozen teacher; its device is used for the forward passes.
            dataset: the transfer set; its transform must not augment (``train=False`` or None).
            modality: the teacher's input modality, a key of the dataset's samples.
            needs: the outputs to store (a distiller's ``teacher_needs()``).
            batch_size: samples per teacher forward while building.
            num_workers: DataLoader workers while building.
            progress: show a progress bar while building.
            stage_dtype: ``"float32"`` or ``"float16"`` storage of the stage maps.
            memory_limit_bytes: see the class.

        Raises:
            ConfigError: an augmenting transform, an unknown modality or stage, or a bad ``stage_dtype``.
        """
        path = os.fspath(path)
        _check_needs(needs, teacher.spec)
        if stage_dtype not in STAGE_DTYPES:
            raise ConfigError(f"teacher cache: stage_dtype must be one of {STAGE_DTYPES}, got {stage_dtype!r}")
        names = [m.name for m in getattr(dataset, "modalities", [])]
        if modality not in names:
            raise ConfigError(f"teacher cache: the data set has no modality '{modality}' (it has {names})")
        parts = key_parts(teacher, dataset, modality, stage_dtype)
        key = digest(parts)
        build_needs = needs
        if os.path.exists(path):
            reason, stored = _stale_reason(path, parts, key, needs, len(dataset))
            if reason is None:
                try:
                    return cls(path, needs, teacher.spec.num_stages, key, memory_limit_bytes)
                except OSError as err:  # the header reads but the data does not
                    reason = _unreadable(err)
                except DataError as err:  # the data read but fail their checksums
                    reason = err.problem
            if stored is not None:
                build_needs = needs | stored
            print(f"teacher cache {path} is stale ({reason}), rebuilding", file=sys.stderr)
        _build(path, teacher, dataset, modality, build_needs, parts, key, batch_size, num_workers, progress,
               stage_dtype)
        return cls(path, needs, teacher.spec.num_stages, key, memory_limit_bytes)

    @property
    def device(self) -> torch.device:
        """Where the in-memory arrays are (the CPU for a file-backed cache)."""
        return self._memory["embedding"].device if self._memory is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> "TeacherFeatureCache":
        """Move the in-memory arrays to ``device`` (a file-backed cache stays on the CPU); returns ``self``."""
        if self._memory is not None:
            self._memory = {name: array.to(device) for name, array in self._memory.items()}
        return self

    def lookup(self, index: torch.Tensor) -> EncoderOutput:
        """The teacher's outputs for samples ``index`` (B,), as float32 tensors on ``index``'s device.

        ``features`` has one entry per teacher stage, the stored map at each stage in ``needs.stages`` and
        None elsewhere; ``logits`` is None unless ``needs.logits``.

        Raises:
            IndexError: an index on the CPU, or any index of a file-backed cache, outside [0, N).
            DataError: a file-backed cache's file cannot be read, or a chunk read fails its checksum.
        """
        index = index.detach().reshape(-1)
        if self._memory is not None:
            arrays = self._select_in_memory(index)
        else:
            arrays = self._read_from_file(index.to("cpu", torch.int64))
        to_host = index.device.type == "cpu"  # a non-blocking copy to the host could be read before it lands
        out = {name: array.to(index.device, torch.float32, non_blocking=not to_host) for name, array in arrays.items()}
        features: list[Any] = [out.get(f"stage_{s}") for s in range(self.num_stages)]
        return EncoderOutput(features, out["embedding"], out.get("logits"))

    def _select_in_memory(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of each in-memory array, selected on the arrays' device (moved to ``index``'s accelerator)."""
        if index.device.type == "cpu":
            self._check_range(index)
        elif self.device != index.device:
            self.to(index.device)
        rows = index.to(self.device, torch.int64)
        return {name: self._memory[name].index_select(0, rows) for name in self.names}

    def _read_from_file(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of each array read from the file (h5py reads increasing unique rows: read those, then
        restore the batch's order and repeats)."""
        self._check_range(rows)
        unique, inverse = np.unique(rows.numpy(), return_inverse=True)
        inverse = torch.from_numpy(inverse.reshape(-1))
        arrays = {}
        for name in self.names:
            try:
                dataset = self._handle()[name]
                array = dataset[unique] if len(unique) else dataset[0:0]
            except OSError as err:  # one line naming the file: a damaged chunk, or a file gone bad mid-run
                problem = (f"damaged ('{name}' fails its checksum)" if _checksum_failed(err) else _unreadable(err))
                raise DataError(self.path, f"the teacher cache is {problem}; delete it to rebuild it") from None
            arrays[name] = torch.from_numpy(array)[inverse]
        return arrays

    def _check_range(self, rows: torch.Tensor) -> None:
        """Refuse CPU indices outside [0, N) with a clear error."""
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.num_samples):
            raise IndexError(f"teacher cache {self.path}: index out of range [0, {self.num_samples})")

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}


def key_parts(teacher: FrozenTeacher, dataset: PairedDataset, modality: str, stage_dtype: str) -> dict[str, Any]:
    """What a cache's contents depend on, by name (the names appear in the 'stale' message).

    Raises:
        ConfigError: the dataset's transform augments, so the teacher's view differs from step to step.
    """
    transform = getattr(dataset, "transform", None)
    if transform is not None and getattr(transform, "train", False):
        raise ConfigError("teacher cache: the data set's transform augments (train=True); cached teacher outputs "
                          "are only valid for an unaugmented teacher view")
    rows = getattr(dataset, "rows", np.arange(len(dataset)))
    return {
        "format": FORMAT,
        "teacher": teacher.fingerprint(),
        "modality": modality,
        **data_parts(dataset.path, getattr(dataset, "split", None), rows),
        "transform": repr(transform),
        "stage dtype": stage_dtype,
    }


def _check_needs(needs: TeacherNeeds, spec: FeatureSpec) -> None:
    bad = sorted(s for s in needs.stages if not 0 <= s < spec.num_stages)
    if bad:
        raise ConfigError(f"teacher cache: stages {bad} out of range; the teacher has {spec.num_stages} stages")
    if needs.logits and spec.num_classes == 0:
        raise ConfigError("teacher cache: logits are needed but the teacher has no classifier (num_classes=0)")


def _array_names(needs: TeacherNeeds) -> list[str]:
    """The stored arrays that serve ``needs`` (the embedding always)."""
    return ["embedding"] + (["logits"] if needs.logits else []) + [f"stage_{s}" for s in sorted(needs.stages)]


def _unreadable(err: BaseException) -> str:
    return f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"


def _damaged(name: str) -> str:
    return f"damaged: '{name}' fails its checksum"


def _checksum_failed(err: OSError) -> bool:
    """Whether a failed read is a chunk failing its Fletcher-32 checksum (the arrays' only filter)."""
    return "filter" in str(err).lower()


def _checksum(dataset: h5py.Dataset) -> int:
    """The CRC-32 of a stored array, read a slab of rows at a time."""
    row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
    step = max(1, CHECKSUM_SLAB_BYTES // row_bytes)
    value = 0
    for start in range(0, dataset.shape[0], step):
        value = _crc32(dataset[start:start + step], value)
    return value


def _read_verified(handle: h5py.File, name: str, path: str) -> np.ndarray:
    """Array ``name`` read whole (its chunks' Fletcher-32 sums checked on the way), checked against its CRC-32.

    Raises:
        DataError: a chunk or the whole fails its checksum.
        OSError: the file cannot be read.
    """
    dataset = handle[name]
    try:
        array = dataset[()]
    except OSError as err:
        if _checksum_failed(err):
            raise DataError(path, _damaged(name)) from None
        raise
    stored = dataset.attrs.get(CHECKSUM_ATTR)
    if stored is not None and _crc32(array) != int(stored):
        raise DataError(path, _damaged(name))
    return array


def _has_checksums(dataset: h5py.Dataset) -> bool:
    return bool(dataset.fletcher32) and CHECKSUM_ATTR in dataset.attrs


def _needs_to_attrs(needs: TeacherNeeds) -> str:
    return json.dumps({"stages": sorted(needs.stages), "embedding": True, "logits": needs.logits})


def _stale_reason(path: str, parts: Mapping[str, Any], key: str, needs: TeacherNeeds,
                  num_samples: int) -> tuple[str | None, TeacherNeeds | None]:
    """Why the file at ``path`` cannot serve ``needs`` (None: it can), and the needs it stores when its key
    matches (to keep them on a rebuild)."""
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT:
                return "not a teacher cache", None
            if handle.attrs["key"] != key:
                old = json.loads(handle.attrs["key_parts"])
                changed = [name for name in parts if old.get(name) != parts[name]] or ["key"]
                return f"{', '.join(changed)} changed", None
            info = json.loads(handle.attrs["needs"])
            stored = TeacherNeeds(frozenset(info["stages"]), True, bool(info["logits"]))
            if not all(_has_checksums(item) for item in handle.values() if isinstance(item, h5py.Dataset)):
                return "written without checksums", stored
            lacking = [f"stage {s}" for s in sorted(needs.stages - stored.stages)]
            lacking += ["logits"] if needs.logits and not stored.logits else []
            if lacking:
                return f"it lacks {', '.join(lacking)}", stored
            for name in _array_names(needs):
                if name not in handle or handle[name].shape[0] != num_samples:
                    return f"'{name}' is missing or does not hold {num_samples} rows", None
    except (OSError, KeyError, ValueError, TypeError) as err:
        return _unreadable(err), None
    return None, None


def _build(path: str, teacher: FrozenTeacher, dataset: PairedDataset, modality: str, needs: TeacherNeeds,
           parts: Mapping[str, Any], key: str, batch_size: int, num_workers: int, progress: bool,
           stage_dtype: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate)
    bar = tqdm(total=len(dataset), desc="teacher cache", unit="sample", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    written = 0
    try:
        with atomic_output(path) as temporary, hdf5_output(temporary) as handle:
            for batch in loader:
                rows = batch["index"].numpy()
                out = teacher(batch[modality].to(device))
                arrays = {"embedding": out.embedding}
                if needs.logits:
                    arrays["logits"] = out.logits
                arrays.update({f"stage_{s}": out.features[s] for s in needs.stages})
                for name, tensor in arrays.items():
                    array = tensor.detach().float().cpu().numpy()
                    if name.startswith("stage_"):
                        array = array.astype(stage_dtype)
                    if name not in handle:
                        # one sample per chunk for maps (random lookups read nothing else), 64 for vectors
                        rows_per_chunk = 1 if name.startswith("stage_") else min(64, len(dataset))
                        handle.create_dataset(name, shape=(len(dataset),) + array.shape[1:], dtype=array.dtype,
                                              chunks=(rows_per_chunk,) + array.shape[1:], fletcher32=True)
                    if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                        handle[name][rows[0]:rows[0] + len(rows)] = array
                    else:
                        handle[name][rows] = array  # h5py needs increasing rows: the loader keeps the order
                written += len(rows)
                bar.update(len(rows))
            if written != len(dataset):
                raise RuntimeError(f"teacher cache: wrote {written} of {len(dataset)} samples")
            for array_set in handle.values():  # read back: the sum of what the file holds, in row order
                array_set.attrs[CHECKSUM_ATTR] = _checksum(array_set)
            handle.attrs.update(format=FORMAT, key=key, key_parts=json.dumps(parts, sort_keys=True),
                                needs=_needs_to_attrs(needs))
    finally:
        bar.close()
