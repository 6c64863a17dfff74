"""The CRC-32s of a ``torch.save`` archive, checked: torch.load reads the zip's members without them.

``torch.save`` writes a zip whose members (the pickled structure ``data.pkl`` and one ``data/N`` per tensor
storage) carry a CRC-32 each. ``torch.load`` never checks them, so a flipped byte or a zeroed disk block inside
a tensor loads as different numbers. Reading every member back through :mod:`zipfile` checks them (about as
fast as reading the file: 70 ms for a 210 MB checkpoint). A damaged member is named by the tensor that holds
its storage, found by reading ``data.pkl`` with a stand-in for every global it names (nothing is built, no
code runs).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any, Iterator, Optional

CHUNK = 1 << 20


def damaged_member(path: str | os.PathLike) -> Optional[str]:
    """``member NAME (tensor KEY) fails its CRC-32 check``-like words for the first damaged member of a zip
    archive, or None when every member reads back intact (or the file is no zip: torch.load words that)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as err:  # its central directory, at the end, is damaged
        return f"its zip directory cannot be read ({err})"
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    while member.read(CHUNK):
                        pass
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
                what = "fails its CRC-32 check" if "CRC" in str(err) else f"cannot be read ({err})"
                tensor = _tensor_of(archive, info.filename)
                name = info.filename.split("/", 1)[-1]  # torch prefixes the archive's own (temporary) name
                return f"member {name}{f' (tensor {tensor})' if tensor else ''} {what}"
    return None


def _tensor_of(archive: zipfile.ZipFile, member: str) -> Optional[str]:
    """The dotted key of the tensor whose storage is ``member`` (``…/data/N``), or None."""
    folder, _, storage = member.rpartition("/data/")
    if not folder or not storage:
        return None
    try:
        structure = _Structure(io.BytesIO(archive.read(f"{folder}/data.pkl"))).load()
    except Exception:  # a damaged data.pkl too: the member's name is all there is
        return None
    return next((key for key, value in _leaves(structure, "") if value == _Storage(storage)), None)


class _Storage(str):
    """A tensor as the key of its storage."""


class _Anything:
    """Every global ``data.pkl`` names (rebuild functions, dtypes, devices): called with a storage among its
    arguments it is that storage (so a rebuilt tensor or parameter is its storage's key), else an empty stand-in."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return next((arg for arg in args if isinstance(arg, _Storage)), None) or object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass


class _Mapping(dict):
    """An OrderedDict (a state dict), without the attributes pickled beside its items."""

    def __setstate__(self, state: Any) -> None:
        pass


class _Structure(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Mapping if name == "OrderedDict" else _Anything

    def persistent_load(self, pid: Any) -> _Storage:
        return _Storage(pid[2])


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        yield prefix, value
        return
    for key, item in items:
        yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
