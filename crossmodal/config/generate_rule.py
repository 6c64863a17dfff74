"""Why ``data.generate`` follows its own ``data.path`` and no other: a typo must not train on made-up data.

A shipped config such as ``smoke_teacher.yaml`` pairs ``data.path: runs/smoke/synthetic.h5`` with
``data.generate`` (make the synthetic file when absent). A user who adapts it with ``data.path=cifr10.h5``
(a typo of their own file) would otherwise inherit the generator and train on synthetic scenes, exit 0. The
rule: a ``data.generate`` written in a YAML file applies only to the ``data.path`` written beside it; a
``data.path`` given on the command line must exist unless ``data.generate`` is given on the command line too.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, MutableMapping, Sequence

from crossmodal.config.schema import parse_override, read_yaml
from crossmodal.errors import ConfigError


def apply_generate_rule(tree: MutableMapping[str, Any], path: str | os.PathLike | None, overrides: Sequence[str],
                        base: Mapping[str, Any] | None = None) -> None:
    """Drop (in the validated ``tree``) a written ``data.generate`` that the command line moved away from.

    Raises:
        ConfigError: ``data.path: X does not exist (data.generate, set in F, applies only to the path written
            there)`` when the path given on the command line is missing.
    """
    data = tree.get("data")
    if not isinstance(data, MutableMapping) or data.get("generate") is None:
        return
    typed = None
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "data":
            continue
        if len(keys) == 1 or keys[1] == "generate":
            return  # the generator (or the whole data section) was given on the command line: it applies
        if keys[1] == "path" and len(keys) == 2:
            typed = value
    if typed is None:
        return
    written = (read_yaml(path) if path is not None else dict(base or {})).get("data") or {}
    written_path = written.get("path") if isinstance(written, Mapping) else None
    if isinstance(written_path, str) and _same(written_path, data["path"]):
        return  # the path written beside the generator, only spelled again
    if not os.path.exists(data["path"]):
        where = os.path.basename(os.fspath(path)) if path is not None else "the base config"
        raise ConfigError(f"data.path: {typed} does not exist (data.generate, set in {where}, applies only to the "
                          f"path written there)")
    data["generate"] = None  # the user's own file: nothing is generated for it, now or on --resume


def _same(written: str, resolved: str) -> bool:
    return os.path.abspath(os.path.expanduser(written)) == resolved
