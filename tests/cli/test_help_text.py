"""``--help`` reads as plain words: no reStructuredText markup from the docstrings behind it leaks through."""
from __future__ import annotations

import argparse

import pytest

from conftest import cli
from crossmodal import data_prep
from crossmodal.cli.help_text import plain
from crossmodal.cli.main import build_parser

MARKUP = ("``", ":mod:", ":func:", ":class:", ":meth:", ":attr:", ">>>")


def _verbs() -> list[str]:
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return sorted(subparsers.choices)


def test_every_verb_is_checked():
    assert {"prepare", "inspect", "train-teacher", "distill", "probe", "segment", "report", "demo"} <= set(_verbs())


COMMANDS = [[]] + [[verb] for verb in _verbs()] + [["prepare", source] for source in data_prep.CONVERTERS]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(command) or "crossmodal" for command in COMMANDS])
def test_help_has_no_markup(command):
    result = cli(*command, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: crossmodal"), result.stderr
    leaked = [marker for marker in MARKUP if marker in result.stdout]
    assert not leaked, f"crossmodal {' '.join(command)} --help shows {leaked}:\n{result.stdout}"
    assert "::\n" not in result.stdout


def test_converter_help_keeps_its_paragraphs_lists_and_literal_blocks():
    nyu = cli("prepare", "nyu", "--help").stdout
    assert "(nyu_depth_v2_labeled.mat, MATLAB" in nyu and "The metadata folder (--meta) holds splits.mat" in nyu
    assert "back to 480 x 640):\n\n    images     (1449, 3, 640, 480) uint8" in nyu  # the table as written
    assert "\nReferences:\n    - [0] Silberman" in nyu
    synthetic = cli("prepare", "synthetic", "--help").stdout
    assert "crossmodal.data.synthetic" in synthetic and "\n\nRooms with floor" in synthetic


@pytest.mark.parametrize("text, expected", [
    ("See :mod:`crossmodal.data.synthetic` and :func:`~crossmodal.progress.sample_bar`.",
     "See crossmodal.data.synthetic and sample_bar."),
    (":class:`the writer <crossmodal.data.format.PairedWriter>`, :py:meth:`a.B.c`", "the writer, a.B.c"),
    ("``--meta`` holds ``splits.mat``; run ``crossmodal prepare repack --src a.h5``",
     "--meta holds splits.mat; run 'crossmodal prepare repack --src a.h5'"),
    ("As h5py sees it::\n\n    images (3, 4)\n\nThen.", "As h5py sees it:\n\n    images (3, 4)\n\nThen."),
    ("Sum two numbers.\n\nExamples:\n    >>> add(1, 2)\n    3\n\nMore.", "Sum two numbers.\n\nMore."),
    ("plain text: 'quoted', a-b, 50%, [64, 64]", "plain text: 'quoted', a-b, 50%, [64, 64]"),
], ids=["roles", "titled-roles", "literals", "literal-block", "doctest", "no-markup"])
def test_plain(text, expected):
    assert plain(text) == expected


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser of the command tree: crossmodal, each verb, each prepare source (and any deeper level)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, path + (name,))


PARSERS = list(_parsers(build_parser()))
GARBAGE = ("{'option_strings'", "<argparse.", "%(", "%%")


def test_the_tree_holds_every_verb_and_prepare_source():
    paths = {path for path, _ in PARSERS}
    assert {(verb,) for verb in _verbs()} <= paths
    assert {("prepare", source) for source in data_prep.CONVERTERS} <= paths


@pytest.mark.parametrize("path, parser", PARSERS, ids=[" ".join(path) or "crossmodal" for path, _ in PARSERS])
def test_help_renders_through_argparse_without_format_garbage(path, parser):
    """argparse expands each argument's help with ``%``: a stray one raises, or prints the argument's dict
    (``about 20{'option_strings': ...}maller`` was the --compression help of every prepare source)."""
    text = parser.format_help()  # raises ValueError/TypeError on a malformed % in any help text
    leaked = [marker for marker in GARBAGE if marker in text]
    assert not leaked, f"crossmodal {' '.join(path)} --help shows {leaked}:\n{text}"


def test_compression_help_says_twenty_percent():
    text = " ".join(cli("prepare", "synthetic", "--help").stdout.split())
    assert "Blosc Zstd + bit shuffle: about 20% smaller, slower to read" in text


def _says_nothing(text) -> bool:
    """A missing help text, or one that gives only the default ("default 30")."""
    words = (text or "").strip().lstrip("(").split()
    return not words or words[0].rstrip(":") == "default"


def test_every_option_of_every_verb_says_what_it_does():
    """Before: segment's --train-split, --test-split, --num-workers and --decoder-channels had no description,
    and --protocol, --epochs, --batch-size only their defaults."""
    bare = [f"crossmodal {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            for path, parser in PARSERS for action in parser._actions
            if not isinstance(action, argparse._SubParsersAction)
            and action.help != argparse.SUPPRESS and _says_nothing(action.help)]
    assert not bare, "options whose help is missing or only its default: " + ", ".join(bare)
    assert _says_nothing("default: both") and _says_nothing(None) and not _says_nothing("batch size (default 16)")
