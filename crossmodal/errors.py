"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""
from __future__ import annotations

import os


class CrossmodalError(Exception):
    """An error caused by the user's input (a file, a flag, a config), not by a bug."""


class DataError(CrossmodalError):
    """A problem with one file, reported as ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(CrossmodalError):
    """A wrong option: an unknown name, a value of the wrong type or out of range, an impossible combination."""
