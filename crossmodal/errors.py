"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""
from __future__ import annotations

import os


_WORKER_PREFIX = "Caught "


def _from_worker(text: str) -> str:
    """The original one-line message inside the text torch's DataLoader rebuilds a worker's exception from
    (``Caught X in DataLoader worker process N.\nOriginal Traceback ...\nmodule.X: message``)."""
    if not (text.startswith(_WORKER_PREFIX) and "\nOriginal Traceback" in text):
        return text
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    return last.split(": ", 1)[1] if ": " in last else last


class CrossmodalError(Exception):
    """An error caused by the user's input (a file, a flag, a config), not by a bug.

    Raised inside a DataLoader worker, it reaches the main process as the same one-line error (torch rebuilds
    it from its formatted traceback, which is unwrapped here).
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_from_worker(args[0]),)
        super().__init__(*args)


class DataError(CrossmodalError):
    """A problem with one file, reported as ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str | None = None) -> None:
        if problem is None:  # rebuilt from one message (a DataLoader worker's): "<file>: <problem>"
            path, _, problem = _from_worker(os.fspath(path)).partition(": ")
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(CrossmodalError):
    """A wrong option: an unknown name, a value of the wrong type or out of range, an impossible combination."""
