"""Registry of distillers by name: ``@register_distiller`` on the class, ``create_distiller`` to build one.

The built-in distillers register when :mod:`crossmodal.distill` is imported (its ``__init__`` imports each).
"""
from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch

from crossmodal.errors import ConfigError
from crossmodal.models.outputs import FeatureSpec

DISTILLERS: dict[str, type] = {}
_BASE_ARGS = {"self", "student", "teacher", "num_samples", "labels"}
T = TypeVar("T", bound=type)


def register_distiller(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`~crossmodal.distill.base.Distiller` available under ``name``."""
    def decorate(cls: T) -> T:
        if name in DISTILLERS and DISTILLERS[name] is not cls:
            raise ValueError(f"distiller name {name!r} is registered twice")
        cls.name = name
        DISTILLERS[name] = cls
        return cls
    return decorate


def list_distillers() -> list[str]:
    """Registered names, in registration order (the order of the paper's comparison)."""
    return list(DISTILLERS)


def description(name: str) -> str:
    """One line on what the distiller ``name`` does: the first sentence of its module's docstring.

    Examples:
        >>> description("kd")
        'Knowledge distillation on softened logits (Hinton et al.).'
    """
    module = sys.modules[get_distiller(name).__module__]
    paragraph = " ".join((module.__doc__ or get_distiller(name).__doc__ or name).strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "."


def distiller_options(name: str) -> dict[str, Any]:
    """The options a distiller accepts, with their defaults."""
    cls = get_distiller(name)
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in _BASE_ARGS and p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_distiller(name: str) -> type:
    """The class registered as ``name``; an unknown name is a :class:`ConfigError` listing the registered ones."""
    if name not in DISTILLERS:
        raise ConfigError(f"unknown distiller {name!r}; registered: {', '.join(DISTILLERS)}")
    return DISTILLERS[name]


def create_distiller(name: str, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                     labels: Optional[torch.Tensor] = None, **options: Any):
    """Build the distiller ``name``; an option it does not know is a :class:`ConfigError` naming it."""
    check_options(name, options)
    return get_distiller(name)(student, teacher, num_samples=num_samples, labels=labels, **options)


def check_options(name: str, options: Mapping[str, Any], key: Optional[str] = None) -> None:
    """Refuse an option the distiller ``name`` does not accept (the first unknown one, alphabetically).

    Args:
        name: a registered distiller.
        options: option names (and values) meant for it.
        key: where the options came from in a config (``"distill.options.crd"``), which then starts the
            message; None for a message about the distiller alone.

    Raises:
        ConfigError: ``name`` is not registered, or ``options`` holds a name it does not accept.
    """
    accepted = distiller_options(name)
    unknown = sorted(set(options) - set(accepted))
    if not unknown:
        return
    listed = ", ".join(accepted) or "(none)"
    if key is None:
        raise ConfigError(f"distiller {name!r} has no option {unknown[0]!r}; its options: {listed}")
    raise ConfigError(f"{key}.{unknown[0]}: '{name}' has no such option; its options: {listed}")
