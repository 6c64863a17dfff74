"""Paired-modality data: the HDF5 format, modality definitions, paired transforms and the torch reader.

Names are imported on first use, so that the command line (``crossmodal inspect``) does not pay for torch and
albumentations when it needs only h5py.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMAT_VERSION": "format", "Layout": "format", "PairedWriter": "paired_writer", "read_layout": "format",
    "MODALITIES": "modalities", "Modality": "modalities", "register_modality": "modalities",
    "resolve_modality": "modalities", "PairedTransform": "transforms", "PairedDataset": "dataset", "collate": "dataset",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crossmodal.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"crossmodal.data.{_EXPORTS[name]}"), name)
