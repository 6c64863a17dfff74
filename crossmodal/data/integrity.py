"""The row CRC-32s of a paired file: where they are stored and how a read checks them.

Fletcher-32 (on every chunk) passes a chunk zeroed whole, stored sum included: a zeroed chunk of ``labels/label``
read as class 0 everywhere, and one of an uncompressed modality as a black image (a compressed one fails to
decompress instead). So a file written by this crossmodal also holds, for each dataset of ``/modalities``,
``/labels`` and ``/splits``, the CRC-32 of each of its rows (``/crc32/<group>/<name>``, (rows,) uint32, its own
CRC-32 in the attribute ``crc32``), and says so with the root attribute ``row_checksum = "crc32"``. Files without
that attribute (written before) read as they did, checked by Fletcher-32 alone.

A mismatch is one line: ``data.h5: labels/label row 17: checksum mismatch (the stored data is damaged, ...)``.
After an edit by hand, :func:`refresh_row_crcs` stores the new rows' CRC-32s. :mod:`crossmodal.data.verify` reads a
whole file back for ``inspect --verify``.
"""
from __future__ import annotations

import h5py
import numpy as np

from crossmodal.checksums import crc32, first_mismatch, row_crc32s
from crossmodal.data.codecs import chunk_error
from crossmodal.errors import DataError

ROOT_ATTR = "row_checksum"
ALGORITHM = "crc32"
GROUP = "crc32"
GROUPS = ("modalities", "labels", "splits")
MISMATCH = ("checksum mismatch (the stored data is damaged, or was edited without refreshing its row CRC-32s: "
            "docs/format.md)")


def crc_key(key: str) -> str:
    """Where the row CRC-32s of dataset ``key`` (e.g. ``labels/label``) are stored."""
    return f"{GROUP}/{key}"


def has_row_crcs(handle: h5py.File) -> bool:
    value = handle.attrs.get(ROOT_ATTR, "")
    return (value.decode() if isinstance(value, bytes) else str(value)) == ALGORITHM


def dataset_keys(handle: h5py.File) -> list[str]:
    """``group/name`` of every dataset of the three data groups."""
    return [f"{group}/{name}" for group in GROUPS if isinstance(handle.get(group), h5py.Group)
            for name in handle[group]]


def require_row_crcs(path: str, handle: h5py.File) -> None:
    """Check that a file that says its rows carry CRC-32s has them for every dataset, of the right length."""
    if not has_row_crcs(handle):
        return
    for key in dataset_keys(handle):
        where = crc_key(key)
        if where not in handle or handle[where].shape != handle[key].shape[:1]:
            raise DataError(path, f"{where} is missing or of the wrong length (the file says its rows carry CRC-32s)")


def row_crcs(path: str, handle: h5py.File, key: str) -> np.ndarray | None:
    """The stored row CRC-32s of dataset ``key``, themselves checked; None for a file written without them.

    Raises:
        DataError: they are missing, of the wrong length, or damaged.
    """
    if not has_row_crcs(handle):
        return None
    where = crc_key(key)
    if where not in handle:
        raise DataError(path, f"{where} is missing (the file says its rows carry CRC-32s)")
    dset = handle[where]
    try:
        crcs = dset[()]
    except OSError as err:
        raise DataError(path, f"{where}: {chunk_error(err)}") from None
    if crcs.shape != handle[key].shape[:1] or "crc32" not in dset.attrs or crc32(crcs) != int(dset.attrs["crc32"]):
        raise DataError(path, f"{where}: {MISMATCH}")
    return crcs


def store_row_crcs(handle: h5py.File, key: str, crcs: np.ndarray) -> None:
    """Write the row CRC-32s of dataset ``key`` (with their own CRC-32) where :func:`row_crcs` reads them."""
    crcs = np.asarray(crcs, np.uint32)
    if crc_key(key) in handle:
        del handle[crc_key(key)]
    dset = handle.create_dataset(crc_key(key), data=crcs, fletcher32=True)
    dset.attrs["crc32"] = crc32(crcs)


def all_zero(row: np.ndarray) -> bool:
    """Whether ``row`` is zeros only: the one content Fletcher-32 cannot vouch for, so the only row whose CRC-32
    the sample reader computes. Each modality and segmentation row is a chunk of its own, so a chunk zeroed
    whole (its stored Fletcher-32 with it) reads back as such a row, and any other damage to a chunk fails
    Fletcher-32 or decompression first. Checking every row would cost the reader about 8% (0.32 ms of a
    480 x 640 rgb + depth sample); this costs a comparison of the first 4 KiB with zeros. ``inspect --verify``,
    ``repack``, the device-resident loader and the layout check (class labels, splits) check every row."""
    head = memoryview(np.ascontiguousarray(row)).cast("B")[:len(_ZEROS)]  # a memcmp: 0.35 us, numpy's any 1.3
    return head == _ZEROS[:len(head)] and not row.any()


_ZEROS = bytes(4096)


def refresh_row_crcs(handle: h5py.File, key: str) -> None:
    """After an edit of dataset ``key`` by hand (h5py, ``r+``), store the row CRC-32s of what it now holds, so
    that the edit reads as intended rather than as damage. A file without row CRC-32s is left as it is."""
    if has_row_crcs(handle):
        store_row_crcs(handle, key, row_crc32s(handle[key][()]))


def mismatch(key: str, row: int) -> str:
    return f"{key} row {row}: {MISMATCH}"


def check_rows(path: str, key: str, values: np.ndarray, crcs: np.ndarray | None,
               rows: int | np.ndarray = 0) -> None:
    """Raise a :class:`DataError` naming the first row of ``values`` that fails its CRC-32 (of ``crcs``, the
    dataset's, None: nothing to check). ``values`` holds rows ``rows ..`` of the dataset, or the rows listed."""
    if crcs is None:
        return
    rows = np.arange(rows, rows + len(values)) if isinstance(rows, int) else np.asarray(rows)
    bad = first_mismatch(values, crcs[rows])
    if bad is not None:
        raise DataError(path, mismatch(key, int(rows[bad])))


def read_checked(path: str, handle: h5py.File, key: str) -> np.ndarray:
    """Dataset ``key`` read whole (a class label set or a split), each row checked.

    Raises:
        DataError: naming the dataset and the rows of a damaged chunk, or the first row failing its CRC-32.
    """
    dset = handle[key]
    try:
        values = dset[()]
    except OSError:
        start, stop, err = _bad_chunk(dset)
        raise DataError(path, f"{key} rows {start}..{stop - 1}: {chunk_error(err)}") from None
    check_rows(path, key, values, row_crcs(path, handle, key))
    return values


def _bad_chunk(dset: h5py.Dataset) -> tuple[int, int, OSError]:
    """The rows of the first chunk of ``dset`` that cannot be read, and the error (after a whole read failed)."""
    step = dset.chunks[0] if dset.chunks else len(dset)
    for start in range(0, len(dset), step):
        try:
            dset[start:start + step]
        except OSError as err:
            return start, min(start + step, len(dset)), err
    return 0, len(dset), OSError("the dataset cannot be read")
