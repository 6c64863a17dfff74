"""Registry of distillers by name: ``@register_distiller`` on the class, ``create_distiller`` to build one."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, TypeVar

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
    _load_builtin()
    return list(DISTILLERS)


def distiller_options(name: str) -> dict[str, Any]:
    """The options a distiller accepts, with their defaults."""
    cls = get_distiller(name)
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in _BASE_ARGS and p.kind is inspect.Parameter.KEYWORD_ONLY}


def get_distiller(name: str) -> type:
    _load_builtin()
    if name not in DISTILLERS:
        raise ConfigError(f"unknown distiller {name!r}; registered: {', '.join(DISTILLERS)}")
    return DISTILLERS[name]


def create_distiller(name: str, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                     labels: Optional[torch.Tensor] = None, **options: Any):
    """Build the distiller ``name``; an option it does not know is a :class:`ConfigError` naming it."""
    accepted = distiller_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"distiller {name!r} has no option {unknown[0]!r}; its options: "
                          f"{', '.join(accepted) or '(none)'}")
    return get_distiller(name)(student, teacher, num_samples=num_samples, labels=labels, **options)


def _load_builtin() -> None:
    import crossmodal.distill.library  # noqa: F401  (registers the built-in distillers on import)
