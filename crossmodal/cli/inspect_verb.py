"""``crossmodal inspect FILE.h5 [--json] [--preview OUT.png]``: check and summarise a paired file."""
from __future__ import annotations

import argparse
import json
import sys

from crossmodal.argtypes import positive_int


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "inspect", help="check a paired HDF5 file and summarise it",
        description="Check a paired HDF5 file and summarise it: format version, modalities (shape, dtype, value "
                    "range, depth holes and NaNs), label sets with class counts, splits and provenance. "
                    "A malformed file exits with status 2 and one line naming the problem.")
    parser.add_argument("file", metavar="FILE.h5", help="the paired HDF5 file to check")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--preview", metavar="OUT.png", help="also write a PNG grid of a few samples")
    parser.add_argument("--preview-samples", type=positive_int, default=6, metavar="K",
                        help="samples in the grid (default 6), evenly spaced over the file: one to a line for "
                             "large images, several to a line for small ones (CIFAR, STL-10)")
    parser.add_argument("--verify", action="store_true",
                        help="read every row of every modality, label set and split, checking its chunk's checksum "
                             "and (files written since they exist) its own CRC-32; damaged rows are listed and the "
                             "exit status is 2")
    parser.add_argument("--max-rows", type=positive_int, default=512, metavar="R",
                        help="compute value statistics over at most R evenly spaced rows (default 512)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.data.verify import verify
    from crossmodal.data.preview import write_preview
    from crossmodal.data.summary import render_text, summarize

    if args.verify:  # first: damaged chunks would stop the statistics with the first one
        check = verify(args.file)
    summary = summarize(args.file, max_rows=args.max_rows) if not (args.verify and check["damaged_rows"]) else \
        _layout_only(args.file)
    if args.verify:
        summary["verify"] = check
    if args.preview:
        summary["preview"] = write_preview(args.file, args.preview, args.preview_samples)
    print(json.dumps(summary) if args.json else render_text(summary))
    if args.preview and not args.json:
        print(f"  preview: {args.preview}")
    if args.verify and check["damaged_rows"]:
        print(f"crossmodal inspect: error: {args.file}: {_first_damage(check)}", file=sys.stderr)
        return 2
    return 0


def _first_damage(check: dict) -> str:
    """The first damaged row as the reader reports it (``labels/label row 17: checksum mismatch ...``), and how
    many more there are."""
    key, rows = next(iter(check["damaged_rows"].items()))
    more = sum(len(rows) for rows in check["damaged_rows"].values()) - 1
    return f"{key} row {rows[0]}: {check['reasons'][key]}" + (f" (and {more} more damaged rows, listed above)"
                                                             if more else "")


def _layout_only(path: str) -> dict:
    """The summary's layout part without value statistics (for a file whose chunks are damaged)."""
    from crossmodal.data.format import read_layout

    layout = read_layout(path, check_rows=False)
    modalities = {name: {"shape": list(info.shape), "dtype": info.dtype.name, "kind": info.kind, "units": info.units,
                         "stored_range": list(info.value_range) if info.value_range else None,
                         "observed_range": None, "mean": None, "codec": info.codec, "checksum": info.checksum}
                  for name, info in layout.modalities.items()}
    return {"file": layout.path, "format_version": layout.format_version, "num_samples": layout.num_samples,
            "row_crc32": layout.row_crc32, "rows_examined": 0, "modalities": modalities, "labels": {},
            "splits": layout.splits, "provenance": layout.provenance}
