"""How paired files compress and check their chunks: the codec choices, what a file was written with, and
whether this Python can decode it.

Every chunk of a version-2 file (one sample of one modality or label map) passes through a codec and HDF5's
fletcher32 checksum, so a damaged chunk is an error, never silent garbage. The default codec, Blosc with LZ4
and byte shuffle (through the ``hdf5plugin`` package, which registers the filter with HDF5 on import),
decompresses a 480 x 640 RGB-D sample about 7x faster than lzf at a similar size; ``experiments/bench_data.py``
measures each choice. Reading such a file from plain h5py needs only ``import hdf5plugin`` first.

References:
    - Blosc: https://www.blosc.org (blocked, shuffled, multi-codec compression)
    - hdf5plugin: https://github.com/silx-kit/hdf5plugin
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import h5py
import numpy as np

try:  # registers Blosc, Zstd, LZ4 ... with HDF5; a missing package is reported per file, when one needs it
    import hdf5plugin
except ImportError:  # pragma: no cover - the project installs it
    hdf5plugin = None

DEFAULT_CODEC = "blosc-lz4"
CHECKSUM_FILTER = h5py.h5z.FILTER_FLETCHER32
_BLOSC_ID, _ZSTD_ID, _LZ4_ID = 32001, 32015, 32004
_BLOSC_CODES = {0: "blosclz", 1: "lz4", 2: "lz4hc", 3: "snappy", 4: "zlib", 5: "zstd"}
_BLOSC_SHUFFLES = {0: "", 1: "+shuffle", 2: "+bitshuffle"}


@dataclass(frozen=True)
class Codec:
    """One ``--compression`` choice: the h5py ``create_dataset`` filter arguments and a line of help."""

    name: str
    filters: Callable[[], dict[str, Any]]
    help: str


def _blosc(cname: str, clevel: int, shuffle: str) -> Callable[[], dict[str, Any]]:
    def filters() -> dict[str, Any]:
        _require_plugin("write", f"blosc-{cname}")
        mode = {"byte": hdf5plugin.Blosc.SHUFFLE, "bit": hdf5plugin.Blosc.BITSHUFFLE}[shuffle]
        return dict(hdf5plugin.Blosc(cname=cname, clevel=clevel, shuffle=mode))
    return filters


CODECS: dict[str, Codec] = {codec.name: codec for codec in (
    Codec("blosc-lz4", _blosc("lz4", 5, "byte"),
          "Blosc LZ4 + byte shuffle (default): fast to read, about the size of lzf"),
    Codec("blosc-zstd", _blosc("zstd", 3, "bit"),
          "Blosc Zstd + bit shuffle: about 20% smaller, slower to read"),
    Codec("lzf", lambda: {"compression": "lzf", "shuffle": True}, "lzf + shuffle (the version-1 default)"),
    Codec("none", dict, "uncompressed: the largest file, the fastest read"),
)}


def codec_help() -> str:
    """The choices for a ``--compression`` help text, one clause each, with ``%`` escaped: argparse formats help
    texts with ``%`` (an unescaped one printed the whole argument's dict in place of "20% smaller")."""
    return "; ".join(f"{codec.name}: {codec.help}" for codec in CODECS.values()).replace("%", "%%")


def dataset_filters(codec: str, checksum: bool = True) -> dict[str, Any]:
    """``create_dataset`` keyword arguments for ``codec``, with fletcher32 per chunk when ``checksum``.

    Raises:
        KeyError: an unknown codec name.
    """
    if codec not in CODECS:
        raise KeyError(f"unknown compression '{codec}'; choose one of {', '.join(CODECS)}")
    return {**CODECS[codec].filters(), **({"fletcher32": True} if checksum else {})}


def _filters(dset: h5py.Dataset) -> list[tuple[int, tuple[int, ...], str]]:
    plist = dset.id.get_create_plist()
    found = []
    for index in range(plist.get_nfilters()):
        filter_id, _flags, values, name = plist.get_filter(index)
        found.append((int(filter_id), tuple(int(v) for v in values), name.decode(errors="replace")))
    return found


def describe(dset: h5py.Dataset) -> tuple[str, bool]:
    """(the codec a dataset was written with, in words, e.g. ``"blosc lz4+shuffle level 5"``; whether its chunks
    carry a fletcher32 checksum)."""
    words, checksum = [], False
    for filter_id, values, name in _filters(dset):
        if filter_id == CHECKSUM_FILTER:
            checksum = True
        elif filter_id == _BLOSC_ID and len(values) >= 7:
            words.append(f"blosc {_BLOSC_CODES.get(values[6], values[6])}"
                         f"{_BLOSC_SHUFFLES.get(values[5], '')} level {values[4]}")
        elif filter_id == h5py.h5z.FILTER_SHUFFLE:
            words.append("shuffle")
        elif filter_id == h5py.h5z.FILTER_LZF:
            words.append("lzf")
        elif filter_id == h5py.h5z.FILTER_DEFLATE:
            words.append(f"gzip level {values[0] if values else '?'}")
        else:
            words.append(name or f"filter {filter_id}")
    return (" + ".join(reversed(words)) if words else "none"), checksum


def missing_filter(dset: h5py.Dataset) -> str | None:
    """The name of a filter ``dset`` needs that this Python's HDF5 cannot run, or None."""
    for filter_id, _values, name in _filters(dset):
        if not h5py.h5z.filter_avail(filter_id):
            return f"{name or 'filter'} (HDF5 filter {filter_id})"
    return None


def _require_plugin(action: str, codec: str) -> None:
    if hdf5plugin is None:
        raise KeyError(f"cannot {action} '{codec}': the hdf5plugin package is not installed (pip install hdf5plugin)")


def chunk_error(err: OSError) -> str:
    """HDF5's message for a chunk it could not read, in words: a failed checksum or decompression."""
    text = " ".join(str(err).split())
    if "fletcher32" in text.lower() or "checksum" in text.lower():
        return f"a damaged chunk: it fails its checksum ({text})"
    if "filter" in text.lower():  # HDF5 does not say which filter failed: the checksum or the codec
        return f"a damaged chunk: it fails its checksum or cannot be decompressed ({text})"
    return f"cannot read the chunk (truncated or damaged file): {text}"


# ------------------------------------------------------------------------------------------- scaled integers
def quantize(values: np.ndarray, scale: float, dtype: Any = np.uint16) -> tuple[np.ndarray, int, int]:
    """Physical values (e.g. metres) as integers of ``scale`` (e.g. 0.001: millimetres).

    NaN and infinities become 0 (a hole, as the reader reads them); values outside the integer type's range
    are clipped to it. Returns (integers, how many were clipped, how many were NaN or infinite).
    """
    info = np.iinfo(dtype)
    scaled = np.asarray(values, np.float64) / scale
    bad = ~np.isfinite(scaled)
    scaled[bad] = 0
    clipped = int(((scaled < info.min - 0.5) | (scaled > info.max + 0.5)).sum())
    np.clip(np.rint(scaled, out=scaled), info.min, info.max, out=scaled)
    return scaled.astype(dtype), clipped, int(bad.sum())


def read_physical(dset: h5py.Dataset, selection: Any = ()) -> np.ndarray:
    """``dset[selection]`` in physical units: float32 ``values * scale`` for a dataset with a ``scale``
    attribute (depth stored as uint16 millimetres reads as metres), as stored otherwise."""
    scale = dset.attrs.get("scale")
    return dequantize(dset[selection], None if scale is None else float(scale))


def dequantize(values: np.ndarray, scale: float | None) -> np.ndarray:
    """Stored values as float32 physical values (``values * scale``); unscaled arrays come back unchanged."""
    if scale is None:
        return values
    out = values.astype(np.float32)
    out *= np.float32(scale)
    return out
