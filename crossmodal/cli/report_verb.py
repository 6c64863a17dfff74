"""``crossmodal report PATH... --out DIR [--title T]``: tables and plots of probe and segmentation results."""
from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "report", help="tabulate and plot probe and segmentation results",
        description="Collect the JSON results of 'crossmodal probe' and 'crossmodal segment' (files, or folders "
                    "searched for them), average the runs of each method over seeds (mean +- sample std, n "
                    "shown), never across data or label sets, and write DIR/report.md, DIR/report.json and PNG "
                    "plots. The markdown is printed too.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="result JSON files or folders holding them")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--title", default="crossmodal report", metavar="T", help="heading of report.md")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crossmodal.eval.report import render_markdown, write_report

    report = write_report(args.paths, args.out, args.title)
    print(render_markdown(report), end="")
    print(f"wrote {Path(args.out) / 'report.md'}, report.json"
          + "".join(f", {name}" for name in report["plots"]))
    return 0
