"""``crossmodal VERB ...``: the entry point; user errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from crossmodal import __version__, interrupts
from crossmodal.cli import (config_verb, demo_verb, import_verb, inspect_verb, prepare_verb, probe_verb,
                            report_verb, segment_verb, train_verbs)
from crossmodal.cli.help_text import plain_help
from crossmodal.errors import CrossmodalError
from crossmodal.files import place_error

VERBS = (prepare_verb, inspect_verb, train_verbs, import_verb, probe_verb, segment_verb, report_verb, demo_verb,
         config_verb)
EXIT_USER_ERROR = 2
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossmodal",
        description="Cross-modal knowledge transfer: prepare paired data, distil a modality-A teacher into a "
                    "modality-B student, evaluate it.",
        epilog="Run 'crossmodal VERB --help' for the options of one verb.")
    parser.add_argument("--version", action="version", version=f"crossmodal {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(verbs)
    plain_help(parser)  # docstrings and help strings as plain words, whichever verb they come from
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    interrupts.install()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # config overrides may follow options: `distill CFG --out RUN optim.lr=0.1`
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = list(args.overrides) + extra
        else:  # the verb's own usage, and for `train.epochs 1` the key=value it meant
            (getattr(args, "parser", None) or parser).error(
                f"unrecognized arguments: {' '.join(extra)}{train_verbs.override_hint(extra)}")
    try:
        code = args.handler(args) or 0
        sys.stdout.flush()  # a reader gone early (`| head`) is then met here, not in the interpreter's exit
        return code
    except CrossmodalError as err:
        _close_progress_bars()
        print(f"crossmodal {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # an OSError: before that clause, which would re-raise it as a traceback
        return _closed_pipe()
    except MemoryError:
        print(f"crossmodal {args.verb}: error: out of memory (is a size or count far too large?)", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:  # a write refused by its place that no writer turned into a DataError itself
        # (OSError, HDF5's or torch's RuntimeError with "errno = 28" in its text, safetensors' own error): other
        # types are bugs to be seen whole, even when their text mentions a permission
        writer_error = isinstance(err, (OSError, RuntimeError)) or type(err).__name__ == "SafetensorError"
        reason = place_error(err) if writer_error else None
        if reason is None:
            raise
        _close_progress_bars()
        print(f"crossmodal {args.verb}: error: {_os_error_path(err)}{reason}", file=sys.stderr)
        return EXIT_USER_ERROR
    except interrupts.Terminated as err:
        print(f"crossmodal {args.verb}: {err}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as err:  # a training run's says where it saved its checkpoint
        print(f"crossmodal {args.verb}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    """End the progress bars a failure left open, so that the error starts a line of its own (not glued to
    ``stl10:  40%|...``)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _closed_pipe() -> int:
    """Output piped into a reader that stopped early (``| head -1``): stop quietly, as the Python docs advise
    (stdout pointed at /dev/null, so the interpreter's final flush cannot fail again), with the status of a
    Unix tool killed by SIGPIPE (``cat``, ``grep``): the shell reports the reader's status, and ``set -o
    pipefail`` learns that not all output was delivered, as it would from any other command."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (captured in a test): nothing will flush into the pipe
        pass
    return EXIT_CLOSED_PIPE


def _os_error_path(err: BaseException) -> str:
    """``PATH: `` for an OSError that names its file (HDF5 names it inside the message), else nothing."""
    name = getattr(err, "filename", None)
    if name is None:
        match = re.search(r"(?:file)?name = '([^']+)'", str(err))
        name = match.group(1) if match else None
    return f"{name}: " if name else ""


if __name__ == "__main__":
    sys.exit(main())
