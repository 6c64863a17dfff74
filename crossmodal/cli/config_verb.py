"""``crossmodal config list|show NAME|copy NAME DEST``: the configs installed with the package.

A ``pip install`` user has no checkout, so the starting points for their own data (``own_*``) and the demo's
(``demo_*``) ship inside the package (``crossmodal/configs``, setup.cfg's package_data); this verb prints or
copies them, and ``train-teacher``/``distill`` also take a shipped config's name where a path is expected.
Parser construction imports nothing heavy (the CLI's start time is tested).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from crossmodal.errors import DataError
from crossmodal.shipped_configs import shipped_names, shipped_path


def config_argument(value: str | None) -> str | None:
    """A training verb's CFG: a file that exists as given, else a shipped config's name, else as given (the
    config loader then says the file is missing)."""
    if value is None or os.path.exists(value) or os.sep in value:
        return value
    stem = value[:-len(".yaml")] if value.endswith(".yaml") else value
    return shipped_path(stem) if stem in shipped_names() else value


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "config", help="list, print or copy the configs installed with the package",
        description="The YAML configs installed with crossmodal: own_* train on your own file (L -> ab on "
                    "images from 'prepare images'; RGB -> depth on 'prepare nyu' or 'prepare pairs'), demo_* "
                    "are the demo's. Copy one, edit data.path, and train it; train-teacher and distill also "
                    "take a shipped config's name as CFG.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the shipped configs' names, each with its first comment line")
    show = actions.add_parser("show", help="print a shipped config")
    show.add_argument("name", metavar="NAME", help="a name from 'crossmodal config list'")
    copy = actions.add_parser("copy", help="copy a shipped config to a file you can edit")
    copy.add_argument("name", metavar="NAME", help="a name from 'crossmodal config list'")
    copy.add_argument("dest", metavar="DEST", help="the file to write, or a folder (DEST/NAME.yaml)")
    copy.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    parser.set_defaults(handler=_run, verb="config")


def _run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name in shipped_names():
            print(f"{name:28s} {_summary(shipped_path(name))}")
    elif args.action == "show":
        with open(shipped_path(args.name), encoding="utf-8") as handle:
            sys.stdout.write(handle.read())
    else:
        _copy(shipped_path(args.name), args.dest, args.overwrite)
    return 0


def _summary(path: str) -> str:
    """The first sentence of a config's opening comment (what it trains), which may run over two lines."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines).split(". ")[0].rstrip(".")


def _copy(source: str, dest: str, overwrite: bool) -> None:
    from crossmodal.files import atomic_output, ensure_folder, os_reason

    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(source))
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not overwrite:
        raise DataError(dest, "exists already; choose another DEST or add --overwrite")
    ensure_folder(os.path.dirname(dest))
    try:
        with atomic_output(dest) as temporary:
            shutil.copyfile(source, temporary)
    except OSError as err:
        raise DataError(dest, f"cannot write it: {os_reason(err)}") from None
    print(f"wrote {dest}", file=sys.stderr)
