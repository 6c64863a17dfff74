"""From a config's ``data`` section to data sets: the file (generated when asked), transforms, splits, channels.

Every verb that reads a paired file goes through these, so that each check (a missing file, an empty split,
a modality the file cannot give) is made, and worded, once.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import torch

from crossmodal import runtime
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.device import DeviceResidentData
from crossmodal.data.format import read_layout
from crossmodal.data.modalities import resolve_modality
from crossmodal.data.transforms import PairedTransform
from crossmodal.errors import ConfigError, DataError

if TYPE_CHECKING:
    from crossmodal.config import DataSection

GENERATE_OPTIONS = {"num", "size", "seed", "test_fraction", "noise", "workers"}


def ensure_data(data: DataSection) -> None:
    """Generate the synthetic data file when it is absent and ``data.generate`` asks for it (rank 0; the
    others wait); a missing file otherwise is a one-line error."""
    options = dict(data.generate or {})
    unknown = sorted(set(options) - GENERATE_OPTIONS)
    if unknown:
        raise ConfigError(f"data.generate: unknown option '{unknown[0]}'; options: "
                          f"{', '.join(sorted(GENERATE_OPTIONS))}")
    if not os.path.exists(data.path) and data.generate is not None:
        if runtime.rank() == 0:
            from crossmodal.data.synthetic import generate

            os.makedirs(os.path.dirname(data.path) or ".", exist_ok=True)
            print(f"generating the synthetic data set {data.path}", file=sys.stderr)
            generate(data.path, **options)
        runtime.barrier()
    if not os.path.exists(data.path):
        raise DataError(data.path, "no such data file (data.path)")


def transforms(data: DataSection) -> tuple[Optional[PairedTransform], Optional[PairedTransform]]:
    """(training transform, evaluation transform) for the ``data`` section."""
    size = tuple(data.size) if data.size is not None else None
    if size is not None and len(size) != 2:
        raise ConfigError(f"data.size must be [height, width], got {list(size)}")
    scale = data.scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.scale must be [low, high] with 0 < low <= high <= 1, got {scale}")
    evaluation = PairedTransform(size=size, train=False) if size is not None else None
    if data.augment:
        return PairedTransform(size=size, train=True, scale=tuple(scale), color_jitter=data.color_jitter), evaluation
    return evaluation, evaluation


def open_split(path: str, split: str, modalities: Sequence[str], labels: Sequence[Optional[str]],
               transform: Optional[PairedTransform], seed: int, setting: Optional[str] = None) -> PairedDataset:
    """One split of the file with the given modalities and label sets (duplicates and Nones dropped); an empty
    split is a one-line error, and so is a split the file lacks, naming ``setting`` (the config key or flag
    that chose it, e.g. ``data.eval_split``) so the user knows what to change."""
    splits = read_layout(path).splits
    if setting is not None and split not in splits:
        unset = "; or data.eval_split=null to train without evaluating" if setting == "data.eval_split" else ""
        raise DataError(path, f"no split '{split}' ({setting}); it has {sorted(splits)}{unset}")
    dataset = PairedDataset(path, split, modalities=list(dict.fromkeys(modalities)),
                            labels=[name for name in dict.fromkeys(labels) if name], transform=transform, seed=seed)
    if len(dataset) == 0:
        raise DataError(path, f"split '{split}' is empty")
    return dataset


def for_loader(dataset: PairedDataset, loader: str,
               device: torch.device) -> Union[PairedDataset, DeviceResidentData]:
    """A split as the training engine reads it under ``data.loader``: ``workers`` gives it back (a DataLoader
    reads it), ``device`` loads it into ``device``'s memory (:class:`DeviceResidentData`; a split too large for
    it is a one-line error). Call it last, once the split's rows are final."""
    return DeviceResidentData(dataset, device) if loader == "device" else dataset


def modality_channels(path: str, modalities: Mapping[str, str]) -> dict[str, int]:
    """The channel count of each modality (by the key that chose it: a config key or a flag), from the file's
    layout alone; a modality the file can neither read nor derive is a one-line error naming the key."""
    layout = read_layout(path)
    channels = {}
    for key, name in modalities.items():
        try:
            channels[key] = resolve_modality(name, layout).channels
        except KeyError as err:
            raise DataError(path, f"{key}: {err.args[0]}") from None
    return channels


# A config key naming a label set -> (the kind of set it takes, what null means there)
LABEL_KEYS = {"task.classes": ("class", "no image classes"), "task.segmentation": ("segmentation", "no segmentation"),
              "loss.class_labels": ("class", "no class labels")}


def check_label_sets(path: str, keys: Mapping[str, Optional[str]]) -> None:
    """Each label set a config key names (``{"task.segmentation": "seg"}``) is in the file; one that is not is a
    one-line error naming the key to change and its valid values (the file's sets of that kind, or null)."""
    labels = read_layout(path).labels
    for key, name in keys.items():
        if not name or name in labels:
            continue
        kind, meaning = LABEL_KEYS[key]
        matching = sorted(other for other, info in labels.items() if info.type == kind)
        fix = f" or to one of {matching}" if matching else f": the file has no {kind} label set"
        raise DataError(path, f"{key}: no label set '{name}'; set {key}=null ({meaning}){fix}")
