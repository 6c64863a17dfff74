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
    """One CRC-32 per row (first axis) of ``array``, as uint32: zlib's, computed a byte column at a time over
    all rows for short rows (a label or a split index: 60000 of them in 2 ms instead of 20)."""
    array = np.ascontiguousarray(array)
    rows = array.reshape(len(array), -1).view(np.uint8) if array.size else np.zeros((len(array), 0), np.uint8)
    if rows.shape[1] <= _SHORT_ROW_BYTES:
        crcs = np.full(len(rows), 0xFFFFFFFF, np.uint32)
        for column in rows.T:
            crcs = _TABLE[(crcs ^ column) & 0xFF] ^ (crcs >> np.uint32(8))
        return crcs ^ np.uint32(0xFFFFFFFF)
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.uint32, count=len(rows))


def _table() -> np.ndarray:
    """The byte table of the CRC-32 that zlib computes (reflected polynomial 0xEDB88320)."""
    values = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        values = np.where(values & 1, (values >> np.uint32(1)) ^ np.uint32(0xEDB88320), values >> np.uint32(1))
    return values.astype(np.uint32)


_TABLE = _table()
_SHORT_ROW_BYTES = 64


def first_mismatch(array: np.ndarray, stored: np.ndarray) -> int | None:
    """The first row of ``array`` whose CRC-32 differs from ``stored``'s, or None when all match."""
    bad = np.flatnonzero(row_crc32s(array) != np.asarray(stored, np.uint32))
    return int(bad[0]) if bad.size else None
