"""CRC-32 of arrays, the one checksum helper of the caches and data files.

HDF5's Fletcher-32 (on every chunk the project writes) has a blind spot: a chunk zeroed whole, together with
its stored sum, passes, because the Fletcher-32 of zeros is zero. What a bad sector or a sparse-file hole
leaves is exactly that, so every stored array also carries CRC-32s (``zlib.crc32``: about 4 GB/s, a few
percent of a sample's read) of its bytes, which no run of zeros matches. safetensors files have no checksum at
all, and carry the same CRC-32s in their metadata.
"""
from __future__ import annotations

import zlib

import numpy as np


def crc32(array: np.ndarray, value: int = 0) -> int:
    """The CRC-32 of ``array``'s bytes in row (C) order, carried on from ``value``."""
    return zlib.crc32(np.ascontiguousarray(array), value)  # the array itself when contiguous: no copy, no view


def row_crc32s(array: np.ndarray) -> np.ndarray:
    """One CRC-32 per row (first axis) of ``array``, as uint32."""
    array = np.ascontiguousarray(array)
    flat = memoryview(array.reshape(len(array), -1)).cast("B") if array.size else None
    row_bytes = array.nbytes // max(1, len(array))
    return np.fromiter((zlib.crc32(flat[i * row_bytes:(i + 1) * row_bytes]) if flat is not None else 0
                        for i in range(len(array))), dtype=np.uint32, count=len(array))


def first_mismatch(array: np.ndarray, stored: np.ndarray) -> int | None:
    """The first row of ``array`` whose CRC-32 differs from ``stored``'s, or None when all match."""
    bad = np.flatnonzero(row_crc32s(array) != np.asarray(stored, np.uint32))
    return int(bad[0]) if bad.size else None
