"""A split held in accelerator memory and augmented there, batch by batch (``data.loader: device``).

The idea of FFCV and airbench: for data sets that fit in the training device's memory (CIFAR-10 / STL-10
scale, the synthetic scenes), read the split's stored arrays once, keep them on the device in their stored
dtype (uint8 stays uint8: a 96 x 96 RGB sample is 27 KiB), and build every batch there with a few batched
tensor operations: no DataLoader workers, no host round trip, no per-sample Python. The training engine
recognises a data set with a ``batch(indices)`` method and feeds it the sampler's index lists.

A batch is what a DataLoader over the :class:`~crossmodal.data.dataset.PairedDataset` returns with default
collation: each modality as float32 (B, C, H, W), normalised as its :class:`~crossmodal.data.modalities.Modality`
does; segmentation maps int64 (B, H, W); classes, ``index`` and ``row`` int64 (B,). The augmentation has the
semantics of :class:`~crossmodal.data.transforms.PairedTransform` (see :mod:`crossmodal.data.device_ops`):
random resized crop (its scale and ratio ranges, 10 tries then the clamped central crop), bilinear for images
and INTER_AREA when shrinking, nearest for masks and raw depth, a shared horizontal flip, and colour jitter on
the ``"color"`` modalities, one draw per sample shared by the modalities of one source (L and ab come from the
same jittered picture); the evaluation transform's resize is OpenCV's INTER_AREA. Every random number comes
from a counter-based hash of (seed, epoch, row, draw), computed on the device: a sample's augmentation does not
depend on its batch, the batch size or the number of processes, and a resumed run repeats it bit for bit.

Differences from the CPU pipeline (the statistics of the draws are the same, the draws themselves are not):
    - the random numbers come from the hash, not from albumentations' generators, so the crops, flips and
      jitter of a given (seed, epoch, row) differ from the workers' ones;
    - resampling is in float32 with exact weights, not OpenCV's fixed-point ones; integer pictures are then
      rounded as OpenCV rounds (an evaluation resize by 2 equals the CPU's bit for bit, other factors differ
      by one level in a few per cent of the pixels); NaNs of float pictures are resampled as 0 (a hole)
      instead of spreading to their neighbours;
    - the jitter works on float values, clipped after each of its four operations but rounded to integers
      only at the end, with an unrounded grey for contrast and saturation; hue is rotated in float HSV (the
      CPU's uint8 HSV has 2-degree hue steps).
CIE Lab reproduces OpenCV's float conversion exactly (its 33^3 table, read from OpenCV at first use).

Limits: the whole split (every stored source and segmentation map it needs) must fit beside the model: the
bytes are estimated first, and a split larger than the free device memory (on a CPU, half the available RAM)
is a one-line :class:`~crossmodal.errors.DataError` that suggests ``data.loader: workers``. Every source of a
file must have one picture size. A modality needs a torch implementation in :data:`DEVICE_MODALITIES`
(``register_device_modality``); stored modalities without a definition (normalised by the file's value range)
need none. Under DDP every process holds the whole split. The resampling is a float32 matrix product: with
TF32 matmuls enabled (``torch.backends.cuda.matmul.allow_tf32``, off by default) it loses precision.

Examples:
    >>> data = DeviceResidentData(PairedDataset("stl10.h5", "train", ["rgb"], ["label"],
    ...                                         PairedTransform(size=(96, 96))), torch.device("cuda"))
    >>> data.set_epoch(3)
    >>> batch = data.batch(torch.arange(256, device="cuda"))
    >>> batch["rgb"].shape, batch["label"].shape
    (torch.Size([256, 3, 96, 96]), torch.Size([256]))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import h5py
import numpy as np
import torch
from torch import Tensor

from crossmodal.data import device_ops as ops
from crossmodal.data import integrity
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import LabelInfo, ModalityInfo
from crossmodal.data.modalities import LAB_A_RANGE, LAB_B_RANGE, LAB_L_RANGE, MODALITIES, Modality
from crossmodal.errors import DataError

_GIB = 2.0 ** 30
_READ_BLOCK_BYTES = 64 * 2 ** 20  # host memory of one read block while loading


@dataclass(frozen=True)
class DeviceModality:
    """The torch side of a :class:`~crossmodal.data.modalities.Modality`.

    Args:
        normalize: (B, C, H, W) float32 physical values (after ``derive``) -> the network input.
        derive: (B, C_source, H, W) float32 source values -> derived channels (None: the source as is);
            modalities with the same ``derive`` share one computation per batch.
        channels: the derived channels this modality keeps (a slice), or None for all.
    """

    normalize: Callable[[Tensor], Tensor]
    derive: Optional[Callable[[Tensor], Tensor]] = None
    channels: Optional[slice] = None


DEVICE_MODALITIES: dict[str, DeviceModality] = {}


def register_device_modality(name: str, modality: DeviceModality) -> DeviceModality:
    """Add (or replace) the torch implementation of the modality ``name`` (see :data:`MODALITIES`)."""
    DEVICE_MODALITIES[name] = modality
    return modality


def _lab_ab_normalize(ab: Tensor) -> Tensor:
    return torch.cat([_A_RANGE(ab[:, :1]), _B_RANGE(ab[:, 1:])], 1)


_A_RANGE, _B_RANGE = ops.to_range(*LAB_A_RANGE), ops.to_range(*LAB_B_RANGE)
register_device_modality("rgb", DeviceModality(ops.rgb_normalize))
register_device_modality("depth", DeviceModality(ops.depth_normalize))
register_device_modality("raw_depth", DeviceModality(ops.depth_normalize))
register_device_modality("lab_l", DeviceModality(ops.to_range(*LAB_L_RANGE), ops.rgb_to_lab, slice(0, 1)))
register_device_modality("lab_ab", DeviceModality(_lab_ab_normalize, ops.rgb_to_lab, slice(1, 3)))


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes a split may take on ``device``: half the free CUDA memory or half the available RAM on a CPU (the
    other half is left to the model, its activations and the batches built from the split), None (no check)
    elsewhere."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as handle:
                info = dict(line.split(":", 1) for line in handle)
            available = int(info["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return available // 2
    return None


class DeviceResidentData:
    """The samples of a :class:`PairedDataset`, loaded once onto ``device`` and assembled there batch by batch.

    Built from the data set after its rows are final (after ``keep_classes``); it reads the same file, rows,
    modalities, label sets, transform and seed. See the module's description for the semantics and limits.

    Args:
        dataset: the split to hold (its transform: None, a training or an evaluation :class:`PairedTransform`).
        device: where the arrays live and the batches are built.

    Raises:
        DataError: the split does not fit on ``device``, a modality has no device implementation, or the
            file cannot be read.
    """

    def __init__(self, dataset: PairedDataset, device: torch.device | str) -> None:
        self.path = dataset.path
        self.layout = dataset.layout
        self.split = dataset.split
        self.modalities: list[Modality] = list(dataset.modalities)
        self.label_names = list(dataset.label_names)
        self.segmentation_names = list(dataset.segmentation_names)
        self.transform = dataset.transform
        self.seed = dataset.seed
        self.rows = np.array(dataset.rows, dtype=np.int64)
        self.class_values = {name: np.array(values) for name, values in dataset.class_values.items()}
        self.device = torch.device(device)
        self.sources = list(dataset.sources)
        self.nearest = frozenset(dataset.nearest)
        self._epoch = dataset.epoch
        self._implementations = {m.name: self._implementation(m) for m in self.modalities}
        unknown = sorted({m.photometric for m in self.modalities if m.photometric is not None} - set(ops.PHOTOMETRIC))
        if unknown:
            raise DataError(self.path, f"photometric family '{unknown[0]}' has no device implementation; "
                                       f"use data.loader: workers")
        self._stored = self.sources + self.segmentation_names
        self.picture_size = self._picture_size()
        self._check_memory()
        with self._open() as handle:
            self._arrays = {name: self._load(handle, name) for name in self._stored}
        self._rows = torch.as_tensor(self.rows, device=self.device)
        self._classes = {name: torch.as_tensor(values.astype(np.int64), device=self.device)
                         for name, values in self.class_values.items()}

    # ----------------------------------------------------------------------------------------- the data set
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws: call before each epoch."""
        self._epoch = int(epoch)

    def nbytes(self) -> int:
        """Device bytes of the held arrays (stored dtypes, this split's rows)."""
        return sum(len(self.rows) * int(np.prod(self._info(name).shape[1:])) * self._info(name).dtype.itemsize
                   for name in self._stored) + sum(values.size * 8 for values in self.class_values.values())

    def batch(self, indices: Tensor) -> dict[str, Tensor]:
        """The samples at ``indices`` (positions in this data set), augmented, as one collated batch."""
        index = torch.as_tensor(indices, dtype=torch.int64).to(self.device).reshape(-1)
        rows = self._rows[index]
        geometry, draws = self._geometry(rows)
        pictures = {name: self._picture(name, index, geometry) for name in self.sources}
        jittered: dict[tuple[str, Optional[str]], Tensor] = {}
        derived: dict[tuple[str, Optional[str], Callable], Tensor] = {}
        out: dict[str, Tensor] = {}
        for modality in self.modalities:
            key = (modality.source, modality.photometric)
            if key not in jittered:
                jittered[key] = self._jitter(modality, pictures[modality.source], draws)
            implementation = self._implementations[modality.name]
            value = jittered[key]
            if implementation.derive is not None:
                derive_key = (*key, implementation.derive)
                if derive_key not in derived:
                    derived[derive_key] = implementation.derive(value)
                value = derived[derive_key]
                if implementation.channels is not None:
                    value = value[:, implementation.channels]
            out[modality.name] = implementation.normalize(value).contiguous()
        for name in self.label_names:
            if name in self._classes:
                out[name] = self._classes[name][rows]
            else:
                out[name] = _as_int64(self._resampled(self._arrays[name][index][:, None], geometry, True))[:, 0]
        out["index"] = index
        out["row"] = rows
        return out

    # ----------------------------------------------------------------------------------------- set-up
    def _info(self, name: str) -> ModalityInfo | LabelInfo:
        return self.layout.modalities[name] if name in self.layout.modalities else self.layout.labels[name]

    def _implementation(self, modality: Modality) -> DeviceModality:
        """The registered torch implementation, or the generic one of a stored modality without a definition."""
        if modality.name in DEVICE_MODALITIES:
            return DEVICE_MODALITIES[modality.name]
        if MODALITIES.get(modality.name) is None and modality.derive is None:
            info = self.layout.modalities[modality.name]
            low, high = info.value_range or (0.0, 1.0)
            return DeviceModality(ops.to_range(low, high if high > low else low + 1.0))
        raise DataError(self.path, f"modality '{modality.name}' has no device implementation "
                                   f"(crossmodal.data.device.register_device_modality); use data.loader: workers")

    def _picture_size(self) -> tuple[int, int]:
        sizes = {tuple(self._info(name).shape[1:3]) for name in self._stored}
        if len(sizes) != 1:
            raise DataError(self.path, f"data.loader: device needs one picture size for {self._stored}, the file "
                                       f"has {sorted(sizes)}; use data.loader: workers")
        return sizes.pop()

    def _check_memory(self) -> None:
        needed, free = self.nbytes(), free_memory(self.device)
        if free is not None and needed > free:
            raise DataError(self.path, f"split '{self.split}' is too large for the device ({self.device}): "
                                       f"{needed / _GIB:.2f} GiB needed, {free / _GIB:.2f} GiB allowed (half of "
                                       f"what is free); use data.loader: workers")

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(self.path, f"cannot open: {err}") from None

    def _load(self, handle: h5py.File, name: str) -> Tensor:
        """This split's rows of one stored array, in data set order, channel-first, in the stored dtype (uint16
        held as int16 bits: torch's uint16 has few kernels)."""
        group = "modalities" if name in self.layout.modalities else "labels"
        dataset = handle[group][name]
        crcs = integrity.row_crcs(self.path, handle, f"{group}/{name}")
        sample_shape = dataset.shape[1:]
        out = None
        block = max(1, _READ_BLOCK_BYTES // max(1, int(np.prod(sample_shape)) * dataset.dtype.itemsize))
        for start in range(0, len(self.rows), block):
            rows = self.rows[start:start + block]
            try:
                values = _read_rows(dataset, rows)
            except OSError as err:
                raise DataError(self.path, f"cannot read '{name}': {err}") from None
            integrity.check_rows(self.path, f"{group}/{name}", values, crcs, rows)
            if values.dtype == np.uint16:
                values = values.view(np.int16)
            chunk = torch.from_numpy(values)
            if chunk.ndim == 4:  # (N, H, W, C) -> (N, C, H, W)
                chunk = chunk.permute(0, 3, 1, 2)
            if out is None:
                out = torch.empty((len(self.rows), *chunk.shape[1:]), dtype=chunk.dtype, device=self.device)
            out[start:start + len(rows)] = chunk.to(self.device)
        return out

    # ----------------------------------------------------------------------------------------- per batch
    def _geometry(self, rows: Tensor) -> tuple[Optional[ops.Geometry], Optional[Tensor]]:
        """(the batch's geometry or None for the stored pictures, the per-sample draws or None)."""
        transform = self.transform
        if transform is None:
            return None, None
        if not transform.train:
            return (ops.whole_picture(len(rows), self.picture_size, transform.size, self.device)
                    if transform.size is not None and tuple(transform.size) != self.picture_size else None), None
        draws = ops.uniforms(self.seed, self._epoch, rows, ops.CROP_DRAWS + ops.JITTER_DRAWS)
        flip = draws[:, ops.CROP_DRAWS - 1] < 0.5 if transform.hflip else torch.zeros_like(rows, dtype=torch.bool)
        if transform.size is None:
            geometry = ops.whole_picture(len(rows), self.picture_size, None, self.device, flip)
        else:
            geometry = ops.random_resized_crop(draws, self.picture_size, tuple(transform.size), transform.scale,
                                               transform.ratio, flip)
        return geometry, draws[:, ops.CROP_DRAWS:]

    def _resampled(self, stored: Tensor, geometry: Optional[ops.Geometry], nearest: bool) -> Tensor:
        """Stored (B, C, H, W) pictures through the geometry: nearest ones keep their dtype, others become
        float32 (integer pictures rounded, as OpenCV's integer output is)."""
        if geometry is None:
            return stored if nearest else _as_float(stored)
        if geometry.whole:
            return ops.flip_only(stored if nearest else _as_float(stored), geometry.flip)
        if nearest:
            return ops.resample(stored, geometry, nearest=True)
        if stored.is_floating_point():  # a NaN would spread along the resampling matrices' rows
            return ops.resample(torch.nan_to_num(stored.float(), nan=0.0, posinf=0.0, neginf=0.0), geometry, False)
        return ops.round_like_opencv(ops.resample(_as_float(stored), geometry, nearest=False), geometry)

    def _picture(self, name: str, index: Tensor, geometry: Optional[ops.Geometry]) -> Tensor:
        """One source's pictures of the batch after the geometry, as float32 values: physical ones for a
        modality stored as scaled integers (converted before resampling, as the CPU reader does)."""
        stored = self._arrays[name][index]
        scale = self.layout.modalities[name].scale
        if scale is not None:
            stored = _as_float(stored) * float(np.float32(scale))  # a scalar operand: no copy to the device
        return _as_float(self._resampled(stored, geometry, name in self.nearest))

    def _jitter(self, modality: Modality, values: Tensor, draws: Optional[Tensor]) -> Tensor:
        transform = self.transform
        if (draws is None or modality.photometric is None or transform is None or not transform.train
                or transform.color_jitter <= 0):
            return values
        stored = self._arrays[modality.source]
        peak = 1.0 if stored.is_floating_point() else (255.0 if stored.dtype == torch.uint8 else 65535.0)
        jittered = ops.PHOTOMETRIC[modality.photometric](values, draws, transform.color_jitter, peak)
        return jittered if stored.is_floating_point() else torch.floor(jittered + 0.5)


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for any order: one slice when the rows are dense, row by row otherwise."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    low, high = int(ordered[0]), int(ordered[-1]) + 1
    if high - low <= 2 * len(rows):
        values = dataset[low:high][ordered - low]
    else:
        values = np.stack([dataset[int(row)] for row in ordered])
    out = np.empty_like(values)
    out[order] = values
    return out


def _as_float(stored: Tensor) -> Tensor:
    """float32 values of a held array (int16 holds uint16 bits)."""
    if stored.dtype == torch.int16:
        return (stored.to(torch.int32) & 0xFFFF).float()
    return stored.float()


def _as_int64(stored: Tensor) -> Tensor:
    if stored.dtype == torch.int16:
        return stored.to(torch.int64) & 0xFFFF
    return stored.to(torch.int64)
