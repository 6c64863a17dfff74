"""The YAML configs installed with the package (``crossmodal/configs``): their names and files.

Used by ``crossmodal config`` and the training verbs' CFG (a name for a path) and by the demo, which runs its own
(``demo_teacher``, ``demo_distill``). Imports nothing heavy: the CLI builds its parser from it.
"""
from __future__ import annotations

from importlib import resources

from crossmodal.errors import ConfigError


def shipped_names() -> list[str]:
    """The names (without ``.yaml``) of the configs installed with the package, sorted."""
    folder = resources.files("crossmodal") / "configs"
    return sorted(entry.name[:-len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def shipped_path(name: str) -> str:
    """The installed file of config ``name`` (``own_l_to_ab_teacher`` or ``own_l_to_ab_teacher.yaml``).

    Raises:
        ConfigError: no config of that name is shipped (the line lists those that are).
    """
    stem = name[:-len(".yaml")] if name.endswith(".yaml") else name
    names = shipped_names()
    if stem not in names:
        raise ConfigError(f"no shipped config '{name}'; shipped: {', '.join(names)} (crossmodal config list)")
    return str(resources.files("crossmodal") / "configs" / f"{stem}.yaml")
