"""Typed config sections: frozen dataclasses whose fields carry their :class:`~crossmodal.config.schema.Field`.

A section class is its own schema: :meth:`Section.schema` derives the nested dict that
:func:`~crossmodal.config.schema.load_config` checks, so that the YAML keys, the defaults, the one-line errors
and the attributes the code reads are declared once. A loaded config is a tree of sections::

    config = DistillRunConfig.load("experiments/configs/crd_depth.yaml", ["optim.lr=0.01"])
    config.optim.lr            # 0.01, a float
    config.to_tree()           # the plain dict written to config.yaml, checkpoints and model cards

Why dataclasses rather than OmegaConf structured configs or pydantic: the checks and their messages are
ours already (``<file>: '<key>' must be ...``, override parsing, unknown-key listings, which tests and users
rely on), so a library would be a second validator to keep in agreement with the first; the standard
library's dataclasses add attribute access and types without a dependency or a second set of messages.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Mapping, Sequence, TypeVar

from crossmodal.config.schema import _REQUIRED, Field, load_config, validate

POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
S = TypeVar("S", bound="Section")


def setting(kind: str, default: Any = _REQUIRED, **options: Any) -> Any:
    """A dataclass field holding one config value (the arguments are :class:`Field`'s)."""
    spec = Field(kind, default, **options)
    metadata = {"spec": spec}
    if spec.required:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive_setting(kind: str, default: Any = _REQUIRED, **options: Any) -> Any:
    return setting(kind, default, check=POSITIVE, **options)


def non_negative_setting(kind: str, default: Any = _REQUIRED, **options: Any) -> Any:
    return setting(kind, default, check=NON_NEGATIVE, **options)


def section(cls: type) -> Any:
    """A dataclass field holding a nested section (absent or empty in the YAML: all its defaults)."""
    return dataclasses.field(metadata={"section": cls})


class Section:
    """Base class of typed config sections (subclasses are ``@dataclass(frozen=True, kw_only=True)``)."""

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """The nested ``{key: Field | schema}`` dict of this section, in field order."""
        return {f.name: f.metadata["section"].schema() if "section" in f.metadata else f.metadata["spec"]
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_tree(cls: type[S], tree: Mapping[str, Any]) -> S:
        """A section from an already validated tree (see :meth:`load` and :meth:`validated`)."""
        values = {}
        for f in dataclasses.fields(cls):
            value = tree[f.name]
            values[f.name] = f.metadata["section"].from_tree(value) if "section" in f.metadata else value
        return cls(**values)

    @classmethod
    def load(cls: type[S], path: str | os.PathLike | None, overrides: Sequence[str] = (),
             base: Mapping[str, Any] | None = None) -> S:
        """Read a YAML file (or start from ``base``), apply ``key.sub=value`` overrides, check and fill defaults.

        Raises:
            ConfigError: one line naming the file and the key, for the first problem found.
        """
        return cls.from_tree(load_config(path, cls.schema(), overrides, base))

    @classmethod
    def validated(cls: type[S], tree: Mapping[str, Any], where: str) -> S:
        """A section from a partial tree built in code, checked like a file (``where`` names it in errors)."""
        return cls.from_tree(validate(tree, cls.schema(), where))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The nested dict of every key's default (required keys left out)."""
        def walk(schema: Mapping[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, spec in schema.items():
                if isinstance(spec, Mapping):
                    out[key] = walk(spec)
                elif not spec.required:
                    out[key] = copy.deepcopy(spec.default)
            return out
        return walk(cls.schema())

    def to_tree(self) -> dict[str, Any]:
        """The plain nested dict (key order kept): what config.yaml, checkpoints and model cards hold."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_tree() if isinstance(value, Section) else copy.deepcopy(value)
        return out

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (unchecked: for values the code computes, not user input)."""
        return dataclasses.replace(self, **changes)
