"""A paired file -> the same samples in the current format: another codec, checksummed chunks, depth as uint16
millimetres (``crossmodal prepare repack --src old.h5 --out new.h5``).

Version-1 files (lzf chunks, depth as float32 metres, no checksums) read as they are; repacking one makes
its samples decompress several times faster and each damaged chunk an error. Every modality, label set, split
and the provenance are carried over, each row checked against its CRC-32 when the source has them (a damaged
source is refused: its damage would otherwise be blessed with fresh checksums), and the output's row CRC-32s
computed anew (depth may change precision); values are copied unchanged except depth stored in a new precision
(float metres -> millimetres: at most 0.5 mm apart, the sensors' resolution). The source is only read, and the
output appears only when complete.
"""
from __future__ import annotations

import argparse
import os

import h5py
import numpy as np

from crossmodal.data import integrity
from crossmodal.data.codecs import chunk_error, dequantize
from crossmodal.data.format import read_layout
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data_prep.common import add_output_arguments
from crossmodal.errors import DataError
from crossmodal.progress import sample_bar

NAME = "repack"
HELP = "rewrite a paired file (e.g. version 1) in the current format, codec and depth storage"
ROWS_PER_BLOCK = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, metavar="FILE.h5", help="the paired file to rewrite (only read)")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the paired file to write")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> None:
    convert(args.src, args.out, overwrite=args.overwrite, compression=args.compression,
            depth_storage=args.depth_storage)


def convert(src: str, out: str, overwrite: bool = False, compression: str = "blosc-lz4",
            depth_storage: str = "uint16") -> None:
    """Rewrite ``src`` as ``out`` (they may be the same path with ``overwrite``: the rename comes last)."""
    layout = read_layout(src)
    src_bytes = os.path.getsize(src)
    options = {**layout.provenance.get("options", {}), "repacked_from": os.path.abspath(src),
               "repacked_from_version": layout.format_version}
    options.pop("compression", None)
    options.pop("depth_storage", None)
    source = layout.provenance.get("source", src)
    converter = layout.provenance.get("converter", "unknown")
    with h5py.File(src, "r") as handle, PairedWriter(
            out, layout.num_samples, source=str(source), converter=str(converter), options=options,
            overwrite=overwrite, compression=compression, depth=depth_storage) as writer:
        for name, info in layout.modalities.items():
            dset = handle["modalities"][name]
            dtype = np.float32 if info.scale is not None else info.dtype
            writer.add_modality(name, *info.shape[1:], dtype, kind=info.kind, units=info.units,
                                description=str(dset.attrs.get("description", "")))
        for name, info in layout.labels.items():
            if info.type == "segmentation":
                writer.add_segmentation(name, *info.shape[1:], info.class_names, info.ignore_index, info.dtype)
            else:
                writer.add_class_labels(name, integrity.read_checked(src, handle, f"labels/{name}"),
                                        info.class_names)
        arrays = [f"modalities/{name}" for name in layout.modalities]
        crcs = {key: integrity.row_crcs(src, handle, key) for key in integrity.dataset_keys(handle)}
        arrays += [f"labels/{name}" for name, info in layout.labels.items() if info.type == "segmentation"]
        with sample_bar(None, layout.num_samples, f"repack {os.path.basename(src)}") as bar:
            for start in range(0, layout.num_samples, ROWS_PER_BLOCK):
                stop = min(start + ROWS_PER_BLOCK, layout.num_samples)
                block = {}
                for key in arrays:
                    try:
                        stored = handle[key][start:stop]
                        integrity.check_rows(src, key, stored, crcs[key], start)
                    except OSError as err:
                        raise DataError(src, f"{key} rows {start}..{stop - 1}: {chunk_error(err)}; "
                                             f"nothing was written") from None
                    except DataError as err:
                        raise DataError(src, f"{err.problem}; nothing was written") from None
                    scale = handle[key].attrs.get("scale")
                    block[key.split("/", 1)[1]] = dequantize(stored, None if scale is None else float(scale))
                writer.write_batch(start, **block)
                bar.update(stop - start)
        for name in layout.splits:
            writer.add_split(name, integrity.read_checked(src, handle, f"splits/{name}"))
    print(f"wrote {out} (format version {read_layout(out).format_version}, {compression}, depth {depth_storage}; "
          f"{src_bytes / 1e6:.1f} MB -> {os.path.getsize(out) / 1e6:.1f} MB)")

