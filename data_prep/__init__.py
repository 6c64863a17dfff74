"""Converters from raw sources to the paired HDF5 format; one module per source, listed in CONVERTERS.

Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``crossmodal prepare NAME``
dispatches to it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

CONVERTERS = ("nyu", "stl10", "pairs", "images", "synthetic")


def converter(name: str) -> ModuleType:
    """The converter module of source ``name``."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown source '{name}'; known: {CONVERTERS}")
    return importlib.import_module(f"data_prep.{name}")
