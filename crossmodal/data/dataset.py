"""The torch reader of paired files: one dict of aligned modalities and labels per sample."""
from __future__ import annotations

import os
from typing import Any, Sequence

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from crossmodal.checksums import crc32
from crossmodal.data import integrity
from crossmodal.data.codecs import chunk_error, dequantize
from crossmodal.data.format import Layout, read_layout
from crossmodal.data.modalities import Modality, resolve_modality
from crossmodal.data.transforms import PairedTransform
from crossmodal.errors import DataError

# Chunk cache per open dataset: large enough for one 480 x 640 float32 sample, small enough for many workers.
_CHUNK_CACHE_BYTES = 4 * 1024 * 1024


class PairedDataset(Dataset):
    """Samples of a paired HDF5 file, as dicts of aligned tensors.

    Each item is ``{<modality>: float32 (C, H, W), <segmentation set>: int64 (H, W), <class set>: int,
    'index': position in this dataset (0 .. len-1, e.g. a memory-bank row), 'row': row in the file}``.
    Void pixels of a segmentation set hold its ``ignore_index``; a class of -1 means unlabelled.

    The file is opened lazily, once per process (so once in every DataLoader worker), the handle is dropped
    when the dataset is pickled, and each item reads only its own chunks: the file is never loaded whole.

    Args:
        path: the paired ``.h5`` file.
        split: a split stored in the file, or None for every row.
        modalities: the modalities to return, stored (``rgb``, ``depth``) or derived (``lab_l``, ``lab_ab``).
        labels: the label sets to return (class and/or segmentation), by name.
        transform: paired augmentation; None returns the stored size without augmentation.
        seed: base seed of the per-sample augmentation; with :meth:`set_epoch`, an item's augmentation depends
            only on (seed, epoch, row), not on the worker that loads it.

    Examples:
        >>> data = PairedDataset("nyu.h5", "train", modalities=["rgb", "depth"], labels=["seg13"],
        ...                      transform=PairedTransform(size=(240, 320), train=True))
        >>> sample = data[0]; sample["rgb"].shape, sample["depth"].shape, sample["seg13"].shape
        (torch.Size([3, 240, 320]), torch.Size([1, 240, 320]), torch.Size([240, 320]))
    """

    def __init__(self, path: str | os.PathLike, split: str | None = "train",
                 modalities: Sequence[str] = ("rgb",), labels: Sequence[str] = (),
                 transform: PairedTransform | None = None, seed: int = 0) -> None:
        self.path = os.fspath(path)
        self.layout: Layout = read_layout(self.path)
        if isinstance(modalities, str) or isinstance(labels, str):
            raise TypeError("modalities and labels are sequences of names, not a single string")
        try:
            self.modalities: list[Modality] = [resolve_modality(name, self.layout) for name in modalities]
        except KeyError as err:
            raise DataError(self.path, err.args[0]) from None
        unknown = [name for name in labels if name not in self.layout.labels]
        if unknown:
            raise DataError(self.path, f"no label set {unknown}; it has {sorted(self.layout.labels)}")
        self.label_names = list(labels)
        self.segmentation_names = [n for n in labels if self.layout.labels[n].type == "segmentation"]
        self.transform = transform
        self.seed = int(seed)
        # In shared memory, so that set_epoch in the main process reaches persistent DataLoader workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.sources = list(dict.fromkeys(m.source for m in self.modalities))
        self._scales = {name: self.layout.modalities[name].scale for name in self.sources}
        self.nearest = frozenset([m.source for m in self.modalities if m.interpolation == "nearest"]
                                 + self.segmentation_names)
        with h5py.File(self.path, "r") as handle:
            if split is None:
                self.rows = np.arange(self.layout.num_samples, dtype=np.int64)
            elif split in self.layout.splits:
                self.rows = handle["splits"][split][()].astype(np.int64)
            else:
                raise DataError(self.path, f"no split '{split}'; it has {sorted(self.layout.splits)}")
            # Image-level classes are N integers: read once, not per item. read_layout has just checked them
            # and the split row by row against their CRC-32s.
            self.class_values = {name: handle["labels"][name][()] for name in labels
                                 if self.layout.labels[name].type == "class"}
        self.split = split
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._open: dict[str, h5py.Dataset] = {}
        self._keys = {name: f"modalities/{name}" for name in self.sources}
        self._keys.update({name: f"labels/{name}" for name in self.segmentation_names})
        self._crcs: dict[str, np.ndarray | None] = {}
        self.recycle = 0
        self._rings: dict[tuple, list[torch.Tensor]] = {}
        self._batches_made = 0
        self._ring_pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def keep_classes(self, name: str, ids: Sequence[int]) -> None:
        """Keep only the samples whose class in label set ``name`` is one of ``ids`` (see
        :func:`crossmodal.data.classes.resolve_classes`), renumbered 0 .. k-1 in the order of ``ids``.

        Raises:
            DataError: a class of ``ids`` has no sample in this split.
        """
        from crossmodal.data.classes import renumbering, require_classes

        values = self.class_values[name]
        require_classes(values[self.rows], ids, self.layout.labels[name], self.path, str(self.split))
        self.rows = self.rows[np.isin(values[self.rows], np.asarray(ids))]
        self.class_values[name] = renumbering(self.layout.labels[name].num_classes, ids)[values]

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws: call before each epoch, as with a DistributedSampler.

        The epoch lives in shared memory, so this reaches DataLoader workers that already run
        (``persistent_workers=True``) as well as the ones started afterwards.
        """
        self._epoch[0] = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _open={}, _crcs={}, _rings={}, _batches_made=0, _ring_pid=None)
        return state

    def _datasets(self) -> dict[str, h5py.Dataset]:
        """The open HDF5 datasets this reader needs, opened once per process.

        A handle inherited through fork is not safe to use, so a new process reopens the file. The dataset
        objects are kept: looking one up by path costs as much as reading a small sample. So are their row
        CRC-32s (4 bytes a row; None for a file written without them).
        """
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
            self._pid = os.getpid()
            self._open = {name: self._file[key] for name, key in self._keys.items()}
            self._crcs = {name: integrity.row_crcs(self.path, self._file, key) for name, key in self._keys.items()}
        return self._open

    def read_row(self, row: int, keep_stored: bool = False) -> dict[str, np.ndarray]:
        """The arrays of one file row that this dataset needs (sources and segmentation maps), in physical
        units: a modality stored as scaled integers (depth in millimetres) comes back as float32 (metres),
        unless ``keep_stored`` (then as stored: multiply by the layout's ``scale``).

        Raises:
            DataError: a chunk that fails its Fletcher-32 checksum or cannot be decompressed, or a row of zeros
                that fails its CRC-32 (a chunk zeroed whole passes Fletcher-32), naming the dataset and row.
        """
        arrays = {}
        for name, dset in self._datasets().items():
            try:
                stored = dset[row]
            except OSError as err:
                raise DataError(self.path, f"{self._keys[name]} row {row}: {chunk_error(err)}") from None
            crcs = self._crcs[name]
            if crcs is not None and integrity.all_zero(stored) and crc32(stored) != crcs[row]:
                raise DataError(self.path, integrity.mismatch(self._keys[name], row))
            arrays[name] = stored if keep_stored else dequantize(stored, self._scales.get(name))
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._read(index, None)

    def recycle_batches(self, ring: int) -> None:
        """Let each DataLoader worker reuse ``ring`` shared-memory buffers for its batches, round robin, instead
        of mapping fresh ones per batch: on small virtual machines mapping and faulting in the shared memory of
        a 480 x 640 batch costs more than reading it. A worker starts a new batch each time the loader hands one
        out, so a batch is overwritten once the consumer has received ``ring - prefetch_factor`` more batches
        from the same worker: only for a consumer that is done with each batch before it fetches the next
        (the training loop, whose loaders set it in each worker's copy through ``worker_init_fn``: see
        ``engine.loop``), with ``ring = prefetch_factor + 2``. 0 turns it off (the default: batches stay valid
        while they are held).
        """
        self.recycle = int(ring)

    def __getitems__(self, indices: Sequence[int]) -> "SampleBatch":
        """A whole batch in one call (what a DataLoader with a batch size asks for): each sample is decoded
        and normalised straight into its slot of one tensor per key (in shared memory inside a DataLoader
        worker), so no per-sample tensors are made and stacked.

        The result is a list of per-sample views, so torch's default collate still works (at the cost of a
        copy); :func:`collate` hands back the batch tensors themselves.
        """
        indices = [int(index) for index in indices]
        if not indices:
            return SampleBatch([], {})
        first = self._read(indices[0], None)
        batch: dict[str, Any] = {}
        slot = self._next_slot()
        for key, value in first.items():
            shape = (len(indices), *value.shape) if isinstance(value, torch.Tensor) else (len(indices),)
            dtype = value.dtype if isinstance(value, torch.Tensor) else torch.int64
            batch[key] = self._buffer(key, shape, dtype, slot)
            batch[key][0] = value
        for slot, index in enumerate(indices[1:], start=1):
            self._read(index, {key: tensor[slot] for key, tensor in batch.items()})
        return SampleBatch([{key: tensor[slot] for key, tensor in batch.items()} for slot in range(len(indices))],
                           batch)

    def _next_slot(self) -> int | None:
        """The ring slot of the next batch inside a recycling worker, else None (fresh buffers)."""
        if self.recycle <= 0 or get_worker_info() is None:
            return None
        if self._ring_pid != os.getpid():  # rings inherited through a fork belong to the parent
            self._rings, self._batches_made, self._ring_pid = {}, 0, os.getpid()
        self._batches_made += 1
        return self._batches_made % self.recycle

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, slot: int | None) -> torch.Tensor:
        if slot is None:
            return _empty(shape, dtype)
        ring = self._rings.setdefault((key, shape, dtype), [])
        while len(ring) <= slot:
            ring.append(_empty(shape, dtype))
        return ring[slot]

    def _read(self, index: int, out: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Sample ``index``, into ``out`` (views of a batch, one per key) when given, else as new tensors."""
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} samples")
        row = int(self.rows[index])
        # Without augmentation, scaled integers (depth in mm) are dequantised as part of the normalisation.
        arrays = self.read_row(row, keep_stored=self.transform is None)
        scales = self._scales if self.transform is None else {}
        if self.transform is not None:  # seeds only when augmenting: this is the per-sample hot path
            geometric_seed, photometric_seed = (
                int(seed) for seed in np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(2))
            arrays = self.transform.geometric(arrays, self.nearest, seed=geometric_seed)
        photometric: dict[tuple[str, str | None], np.ndarray] = {}
        sample: dict[str, Any] = {}
        for modality in self.modalities:
            key = (modality.source, modality.photometric)
            if key not in photometric:
                array = arrays[modality.source]
                if self.transform is not None:
                    array = self.transform.photometric(modality.photometric, array, seed=photometric_seed)
                photometric[key] = array
            value = photometric[key]
            if value.ndim == 2:
                value = value[..., None]
            target = None if out is None else out[modality.name].numpy()
            if modality.derive is None and modality.elementwise:
                sample[modality.name] = torch.from_numpy(
                    _normalize_into(value, modality, scales.get(modality.source), target))
                continue
            value = dequantize(value, scales.get(modality.source))
            if modality.derive is not None:
                value = modality.derive(value)
            # channel-first before converting, so the (cheap) byte transpose precedes the float copy
            value = modality.normalize(np.ascontiguousarray(value.transpose(2, 0, 1)).astype(np.float32))
            if target is not None:
                np.copyto(target, value)
                value = target
            sample[modality.name] = torch.from_numpy(value)
        for name in self.label_names:
            if name in self.class_values:
                value = int(self.class_values[name][row])
            else:
                value = torch.from_numpy(arrays[name].astype(np.int64))
            if out is None:
                sample[name] = value
            else:
                out[name].copy_(torch.as_tensor(value))
        if out is None:
            sample["index"], sample["row"] = index, row
        else:
            out["index"].fill_(index)
            out["row"].fill_(row)
        return sample


def _normalize_into(value: np.ndarray, modality: Modality, scale: float | None,
                    target: np.ndarray | None) -> np.ndarray:
    """``modality.normalize`` of a stored (H, W, C) array (dequantised by ``scale``) as float32 (C, H, W),
    written into ``target`` when given, with the values of converting, dequantising and normalising in turn.

    The channels are split apart first (OpenCV's de-interleave), so that each conversion to float32 reads one
    contiguous plane: about 1.7x faster than converting the strided channel-first view of a 480 x 640 image.
    """
    channels = value.shape[2]
    if target is None:
        target = np.empty((channels, *value.shape[:2]), dtype=np.float32)
    split = 1 < channels <= 4 and value.dtype in (np.uint8, np.uint16, np.float32)
    planes = cv2.split(value) if split else value.transpose(2, 0, 1)
    for plane, out in zip(planes, target):
        if scale is None:
            np.copyto(out, plane, casting="unsafe")
        else:
            np.multiply(plane, np.float32(scale), out=out, dtype=np.float32, casting="unsafe")
    result = modality.normalize(target)
    if result is not target:
        target[...] = result
    return target


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in shared memory inside a DataLoader worker, so that sending the batch to the
    main process does not copy it (what torch's default collate does for the tensors it stacks).

    In the main process the memory comes from numpy's allocator, which reuses the freed heap of earlier
    batches; torch's maps fresh pages for a batch of tens of MB, and faulting them in cost about 3x the copy.
    """
    if get_worker_info() is None:
        return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class SampleBatch(list):
    """What :meth:`PairedDataset.__getitems__` returns: the samples (views), with ``batch``, the stacked
    tensors they view."""

    def __init__(self, samples: list[dict[str, Any]], batch: dict[str, torch.Tensor]) -> None:
        super().__init__(samples)
        self.batch = batch


def collate(samples: list[Any]) -> Any:
    """The DataLoader ``collate_fn`` for paired data sets: a batch read whole by ``__getitems__`` is handed
    back as it is; anything else goes through torch's default collate.

    Examples:
        >>> loader = DataLoader(PairedDataset("s.h5", "train", ["depth"]), batch_size=64, collate_fn=collate)
    """
    if isinstance(samples, SampleBatch) and samples:
        return samples.batch
    return default_collate(samples)
