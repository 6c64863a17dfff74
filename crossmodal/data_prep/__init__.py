"""Converters from raw sources to the paired HDF5 format; one module per source, listed in CONVERTERS.

Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``crossmodal prepare NAME``
dispatches to it, as do the scripts ``data_prep/NAME.py`` at the top of the repository. Converters build on
:mod:`crossmodal.data` and never import the command line, training or evaluation.
"""
from __future__ import annotations

import importlib
from types import ModuleType

CONVERTERS = ("nyu", "stl10", "pairs", "images", "synthetic", "repack")


def converter(name: str) -> ModuleType:
    """The converter module of source ``name``."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown source '{name}'; known: {CONVERTERS}")
    return importlib.import_module(f"crossmodal.data_prep.{name}")
