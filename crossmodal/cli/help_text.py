"""Help text in plain words: the reStructuredText markup of docstrings (literals, roles, literal-block colons,
doctests) becomes what a person reads in a terminal, and paragraphs, lists and literal blocks keep their shape.

:func:`plain` is the one conversion; :func:`plain_help` applies it to every description, epilog and option help
of a parser and its sub-commands (``crossmodal VERB --help``, ``crossmodal prepare SOURCE --help``);
:class:`ParagraphFormatter` lays out a multi-paragraph description such as a converter's module docstring.
"""
from __future__ import annotations

import argparse
import inspect
import re
import textwrap

# :role:`text`, :domain:role:`text`; the text may be `~a.b.c` (shown as c) or `title <target>` (shown as title)
_ROLE = re.compile(r":(?:[A-Za-z]+:)?[A-Za-z]+:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_INTERPRETED = re.compile(r"(?<![`\w])`([^`]+)`(?:__?)?(?![`\w])")  # `text`, `text`_ and `text <url>`_
_TITLED = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.DOTALL)
_BULLET = re.compile(r"(?:[-*+]|\d+[.)]|\[\d+\]) ")
_DOCTEST = re.compile(r"\s*>>>")
_EXAMPLES = re.compile(r"\s*Examples?:?\s*$")


def plain(text: str | None) -> str | None:
    """``text`` (a docstring or a help string) without reStructuredText markup.

    ``literal`` becomes literal (quoted as 'two words' when it holds a space, so its ends stay visible),
    :mod:`a.b` / :func:`~a.b.c` / :class:`title <a.B>` become a.b / c / title, a paragraph's closing ``::``
    (which announces a literal block) becomes a colon, and doctest examples are left out. Text without markup
    comes back as it was, apart from a docstring's indentation.
    """
    if not text:
        return text
    text = inspect.cleandoc(text)
    text = _ROLE.sub(lambda match: _role_text(match.group(1)), text)
    text = _LITERAL.sub(lambda match: _literal_text(match.group(1)), text)
    text = _INTERPRETED.sub(lambda match: _titled(match.group(1)), text)
    text = re.sub(r"(?m)(\S)::$", r"\1:", text)  # "as h5py sees it::" -> "as h5py sees it:"
    text = re.sub(r"(?m)\s+::$", "", text)  # "as h5py sees it ::" and a lone "::" -> nothing
    return _without_doctests(text)


def _role_text(content: str) -> str:
    titled = _TITLED.match(content)
    if titled and titled.group(1):
        return titled.group(1)
    if content.startswith("~"):
        return content[1:].rsplit(".", 1)[-1]
    return content.lstrip("!")


def _literal_text(content: str) -> str:
    content = " ".join(content.split())
    return f"'{content}'" if " " in content else content


def _titled(content: str) -> str:
    titled = _TITLED.match(content)
    if titled and titled.group(1):
        return f"{titled.group(1)} ({titled.group(2)})"
    return content


def _without_doctests(text: str) -> str:
    """``text`` less its doctest blocks (a ``>>>`` line to the next blank line) and the headings left empty."""
    kept: list[str] = []
    in_doctest = False
    for line in text.split("\n"):
        if _DOCTEST.match(line):
            in_doctest = True
        elif not line.strip():
            in_doctest = False
        if not in_doctest:
            kept.append(line)
    lines = [line for i, line in enumerate(kept)
             if not (_EXAMPLES.fullmatch(line) and not any(rest.strip() for rest in kept[i + 1:i + 2]))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def plain_help(parser: argparse.ArgumentParser) -> None:
    """Apply :func:`plain` to the description, epilog and option help of ``parser`` and of all its sub-commands."""
    parser.description = plain(parser.description)
    parser.epilog = plain(parser.epilog)
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = plain(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain(choice.help)
            for sub in {id(sub): sub for sub in action.choices.values()}.values():  # aliases share a parser
                plain_help(sub)


class ParagraphFormatter(argparse.HelpFormatter):
    """Fills each paragraph of a description to the terminal width on its own (the default formatter runs them
    all into one); list items keep their bullets and indentation, and indented (literal) blocks are kept as
    written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = re.split(r"\n[ \t]*\n", text.strip("\n"))
        return "\n\n".join(_fill_paragraph(paragraph, width, indent) for paragraph in paragraphs)


def _fill_paragraph(paragraph: str, width: int, indent: str) -> str:
    lines = paragraph.rstrip().split("\n")
    if all(line[:1].isspace() for line in lines):  # a literal block: as written
        return "\n".join(indent + line.rstrip() for line in lines)
    items: list[tuple[int, bool, list[str]]] = []  # (leading spaces, is a list item, its words)
    for line in lines:
        stripped = line.lstrip()
        lead = len(line) - len(stripped)
        bullet = bool(_BULLET.match(stripped))
        if not items or bullet or (lead == 0 and (items[-1][0] > 0 or items[-1][1])):
            items.append((lead, bullet, stripped.split()))
        else:
            items[-1][2].extend(stripped.split())
    filled = []
    for lead, bullet, words in items:
        first = indent + " " * lead
        filled.append(textwrap.fill(" ".join(words), width, initial_indent=first,
                                    subsequent_indent=first + ("  " if bullet else ""), break_long_words=False,
                                    break_on_hyphens=False))
    return "\n".join(filled)
