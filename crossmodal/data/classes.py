"""Subsets of a class label set: which classes a teacher is trained on, which ones a probe asks for.

A subset is a list of class ids of one label set, in the order given; the samples of the other classes are
left out, and the kept classes are renumbered 0 .. k-1 in that order (so a classifier trained on a subset has
k outputs, in the order the subset names them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from crossmodal.data.format import LabelInfo
from crossmodal.errors import ConfigError, DataError


def resolve_classes(info: LabelInfo, requested: Sequence[str | int], key: str) -> list[int]:
    """Class ids of ``requested`` (class names, or ids as integers or digit strings) in label set ``info``.

    Args:
        info: the class label set.
        requested: the classes, at least two, each once.
        key: the option that named them (``task.class_subset``, ``--classes``), for the error message.

    Raises:
        ConfigError: an unknown class, a repeated one, fewer than two, or a segmentation label set.

    Examples:
        >>> from crossmodal.data.format import LabelInfo
        >>> info = LabelInfo("label", "class", (6,), np.dtype("int64"), 3, ("cat", "dog", "ship"))
        >>> resolve_classes(info, ["ship", "0"], "--classes")
        [2, 0]
    """
    if info.type != "class":
        raise ConfigError(f"{key}: '{info.name}' is a {info.type} label set; class subsets need image-level classes")
    names = {name: number for number, name in enumerate(info.class_names)}
    ids = []
    for item in requested:
        text = str(item)
        if text in names:
            ids.append(names[text])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < info.num_classes:
            ids.append(int(text))
        else:
            raise ConfigError(f"{key}: '{info.name}' has no class '{text}'; its classes are "
                              f"{', '.join(info.class_names)}")
    repeated = sorted({info.class_names[i] for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"{key}: class {', '.join(repeated)} named twice")
    if len(ids) < 2:
        raise ConfigError(f"{key}: a class subset needs at least 2 classes, got {len(ids)}")
    return ids


def class_names(info: LabelInfo, ids: Sequence[int]) -> list[str]:
    """The names of class ``ids`` of ``info``, in that order."""
    return [info.class_names[i] for i in ids]


def renumbering(num_classes: int, ids: Sequence[int]) -> np.ndarray:
    """A lookup from the label set's ids (and -1, unlabelled, as the last entry) to the subset's 0 .. k-1; -1
    for every class outside the subset.

    Examples:
        >>> renumbering(4, [2, 0])[[0, 1, 2, 3, -1]]
        array([ 1, -1,  0, -1, -1])
    """
    table = np.full(num_classes + 1, -1, dtype=np.int64)
    table[np.asarray(ids, dtype=np.int64)] = np.arange(len(ids))
    return table


def missing_classes(labels: np.ndarray, ids: Sequence[int]) -> list[int]:
    """The ids of ``ids`` that no entry of ``labels`` holds (a class split that leaves a class empty)."""
    present = set(np.unique(labels).tolist())
    return [i for i in ids if i not in present]


def require_classes(labels: np.ndarray, ids: Sequence[int], info: LabelInfo, path: str, split: str,
                    note: str = "") -> None:
    """One line naming the file, split and classes when a class of ``ids`` has no entry in ``labels``.

    Raises:
        DataError: ``PATH: split 'test' has no sample of class sofa in 'scene'`` (then ``note``).
    """
    missing = missing_classes(labels, ids)
    if missing:
        raise DataError(path, f"split '{split}' has no sample of class {', '.join(class_names(info, missing))} in "
                              f"'{info.name}'{note}")
