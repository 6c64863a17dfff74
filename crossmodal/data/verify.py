"""``inspect --verify``: every row of every modality, label set and split read back, each chunk's Fletcher-32 and
each row's CRC-32 checked, and the damaged rows listed (a module of its own: it reads the layout, which the row
checks of :mod:`crossmodal.data.integrity` sit beneath)."""
from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from crossmodal.checksums import row_crc32s
from crossmodal.data.codecs import chunk_error
from crossmodal.data.format import read_layout
from crossmodal.data.integrity import MISMATCH, dataset_keys, row_crcs


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Read every row of every modality, label set and split, checking Fletcher-32 (and decompression) per
    chunk and, when the file has them, each row's CRC-32: the damaged rows per dataset (``modalities/rgb``),
    a reason for each, and the number of chunks read.

    Raises:
        DataError: for a malformed layout or missing/damaged row CRC-32s (a damaged row is reported, not raised).
    """
    layout = read_layout(path, check_rows=False)
    damaged: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    chunks = 0
    with h5py.File(layout.path, "r") as handle:
        for key in dataset_keys(handle):
            dset = handle[key]
            crcs = row_crcs(layout.path, handle, key)
            step = 1 if dset.ndim > 1 else (dset.chunks[0] if dset.chunks else max(1, len(dset)))
            for start in range(0, len(dset), step):
                stop = min(start + step, len(dset))
                chunks += 1
                try:
                    values = dset[start:stop]
                except OSError as err:
                    damaged.setdefault(key, []).extend(range(start, stop))
                    reasons.setdefault(key, chunk_error(err))
                    continue
                if crcs is not None:
                    bad = np.flatnonzero(row_crc32s(values) != crcs[start:stop])
                    if bad.size:
                        damaged.setdefault(key, []).extend(int(start + b) for b in bad)
                        reasons.setdefault(key, MISMATCH)
    return {"chunks_read": chunks, "damaged_rows": damaged, "reasons": reasons}

