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


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically; the parent folders are created."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2)
            handle.write("\n")
