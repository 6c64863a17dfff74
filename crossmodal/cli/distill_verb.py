"""``crossmodal distill --list-distillers``: the registered distillers, one name per line."""
from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "distill", help="distil a modality-A teacher into a modality-B student",
        description="Distil a frozen modality-A teacher into a modality-B student. "
                    "--list-distillers prints the registered distillers, one name per line.")
    parser.add_argument("--list-distillers", action="store_true", help="print the registered distiller names")
    parser.set_defaults(handler=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    if not args.list_distillers:
        args.parser.error("only --list-distillers is available so far; training from a config is not built yet")
    from crossmodal.distill import list_distillers

    print("\n".join(list_distillers()))
    return 0
