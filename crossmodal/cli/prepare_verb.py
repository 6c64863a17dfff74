"""``crossmodal prepare SOURCE ... --out FILE.h5``: convert a raw data set into the paired HDF5 format."""
from __future__ import annotations

import argparse
import sys

from crossmodal import data_prep
from crossmodal.cli.help_text import ParagraphFormatter


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "prepare", help="convert a data set into a paired HDF5 file",
        description="Convert a data set into a paired HDF5 file (docs/format.md). The output is written to a "
                    "temporary name and renamed only when complete: a failed run leaves nothing at --out.")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name in data_prep.CONVERTERS:
        module = data_prep.converter(name)
        sub = sources.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP).strip(),
                                 formatter_class=ParagraphFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=_run, module=module)


def _run(args: argparse.Namespace) -> int:
    args.module.run(args)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
