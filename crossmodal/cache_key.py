"""What a cache of computed outputs depends on, and its digest: shared by the teacher and feature caches.

A cache records these parts by name next to its contents; a reader compares them and names the ones that
changed when it rebuilds.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional

import numpy as np


def data_parts(path: str | os.PathLike, split: Optional[str], rows: np.ndarray) -> dict[str, Any]:
    """The data file (absolute path, size, modification time) and the split (name, SHA-256 of its rows)."""
    stat = os.stat(path)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return {"data file": [os.path.abspath(path), stat.st_size, stat.st_mtime_ns],
            "split": [split, hashlib.sha256(rows.tobytes()).hexdigest()]}


def digest(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the parts as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
