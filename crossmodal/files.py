"""Writing outputs atomically: to a hidden temporary name beside the target, renamed into place when complete."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator


def temporary_name(path: str | os.PathLike, suffix: str = "") -> str:
    """``.NAME.tmp-PID[suffix]`` in the target's folder (same file system, so the rename is atomic)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary name to write; rename it to ``path`` if the block completes, remove it otherwise.

    ``suffix`` keeps an extension on the temporary name for writers that choose the format by it (OpenCV).
    """
    temporary = temporary_name(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def ensure_folder(folder: str | os.PathLike) -> str:
    """Create ``folder`` (and its parents) if missing; return its absolute path.

    Raises:
        DataError: it cannot be created (a read-only place, a file in the way), as one line.
    """
    from crossmodal.errors import DataError

    folder = os.path.abspath(os.fspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DataError(folder, f"cannot create this folder ({err.strerror or err})") from None
    return folder


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically; the parent folders are created.

    Raises:
        DataError: the folder cannot be created or the file cannot be written.
    """
    from crossmodal.errors import DataError

    path = os.path.abspath(os.fspath(path))
    ensure_folder(os.path.dirname(path))
    try:
        with atomic_output(path) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(value, handle, indent=2)
                handle.write("\n")
    except OSError as err:
        raise DataError(path, f"cannot write it ({err.strerror or err})") from None
