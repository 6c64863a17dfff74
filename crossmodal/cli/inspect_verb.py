"""``crossmodal inspect FILE.h5 [--json] [--preview OUT.png]``: check and summarise a paired file."""
from __future__ import annotations

import argparse
import json

from crossmodal.argtypes import positive_int


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "inspect", help="check a paired HDF5 file and summarise it",
        description="Check a paired HDF5 file and summarise it: format version, modalities (shape, dtype, value "
                    "range, depth holes and NaNs), label sets with class counts, splits and provenance. "
                    "A malformed file exits with status 2 and one line naming the problem.")
    parser.add_argument("file", metavar="FILE.h5")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--preview", metavar="OUT.png", help="also write a PNG grid of a few samples")
    parser.add_argument("--preview-samples", type=positive_int, default=6, metavar="K",
                        help="rows of the grid (default 6)")
    parser.add_argument("--max-rows", type=positive_int, default=512, metavar="R",
                        help="compute value statistics over at most R evenly spaced rows (default 512)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.data.preview import write_preview
    from crossmodal.data.summary import render_text, summarize

    summary = summarize(args.file, max_rows=args.max_rows)
    if args.preview:
        summary["preview"] = write_preview(args.file, args.preview, args.preview_samples)
    print(json.dumps(summary) if args.json else render_text(summary))
    if args.preview and not args.json:
        print(f"  preview: {args.preview}")
    return 0
