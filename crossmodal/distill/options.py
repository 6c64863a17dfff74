"""Checks of distiller options: each raises a one-line :class:`ConfigError` naming the distiller and the option,
``"<distiller>: '<option>' must be <what>, got <value>"``, and returns the value converted."""
from __future__ import annotations

import math
import numbers

from crossmodal.errors import ConfigError

__all__ = ["TARGETS", "is_finite_number", "is_integer", "require_classifiers", "require_non_negative",
           "require_non_negative_int", "require_positive", "require_positive_int", "require_target"]

TARGETS = ("auto", "labels", "teacher")  # where a logit distiller's target class comes from (DKD, C2KD)


def is_finite_number(value: object) -> bool:
    """Whether an option is a real number (not a bool) with a finite float value: ``inf``, ``nan``, a string or
    an int too large for a float are not.

    Examples:
        >>> is_finite_number(0.07), is_finite_number(float("inf")), is_finite_number(True), is_finite_number("1")
        (True, False, False, False)
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def is_integer(value: object) -> bool:
    """Whether an option is an ``int`` and not a bool.

    Examples:
        >>> is_integer(3), is_integer(3.0), is_integer(True)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def require_positive(name: str, value: object, distiller: str) -> float:
    """A finite number > 0 (a temperature, an exponent, a variance).

    Args:
        name: the option's name.
        value: its value.
        distiller: the distiller's registered name, which starts the message.

    Returns:
        ``value`` as a float.

    Raises:
        ConfigError: ``value`` is not a finite positive number.

    Examples:
        >>> require_positive("temperature", 4, "kd")
        4.0
        >>> require_positive("temperature", 0, "kd")
        Traceback (most recent call last):
        crossmodal.errors.ConfigError: kd: 'temperature' must be a finite positive number, got 0
    """
    if not is_finite_number(value) or not value > 0:
        raise ConfigError(f"{distiller}: '{name}' must be a finite positive number, got {value!r}")
    return float(value)


def require_non_negative(name: str, value: object, distiller: str, *, finite: bool = True) -> float:
    """A number >= 0 (a loss weight); with ``finite=False`` also ``inf``.

    Args:
        name: the option's name.
        value: its value.
        distiller: the distiller's registered name, which starts the message.
        finite: refuse ``inf`` ("a finite number >= 0"); False accepts it ("a non-negative number").

    Returns:
        ``value`` as a float.

    Raises:
        ConfigError: ``value`` is not a (finite) number >= 0.

    Examples:
        >>> require_non_negative("kd_weight", 1, "crd+kd")
        1.0
        >>> require_non_negative("angle_weight", -1, "rkd", finite=False)
        Traceback (most recent call last):
        crossmodal.errors.ConfigError: rkd: 'angle_weight' must be a non-negative number, got -1
    """
    number = is_finite_number(value) if finite else isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not value >= 0:
        what = "a finite number >= 0" if finite else "a non-negative number"
        raise ConfigError(f"{distiller}: '{name}' must be {what}, got {value!r}")
    return float(value)


def require_positive_int(name: str, value: object, distiller: str) -> int:
    """An ``int`` >= 1, not a bool (a size, a count).

    Args:
        name: the option's name.
        value: its value.
        distiller: the distiller's registered name, which starts the message.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is not a positive integer.

    Examples:
        >>> require_positive_int("feat_dim", 128, "cc")
        128
        >>> require_positive_int("feat_dim", 12.5, "cc")
        Traceback (most recent call last):
        crossmodal.errors.ConfigError: cc: 'feat_dim' must be a positive integer, got 12.5
    """
    if not is_integer(value) or value < 1:
        raise ConfigError(f"{distiller}: '{name}' must be a positive integer, got {value!r}")
    return int(value)


def require_non_negative_int(name: str, value: object, distiller: str) -> int:
    """An ``int`` >= 0, not a bool (a count that may be zero: DKD's warm-up epochs).

    Args:
        name: the option's name.
        value: its value.
        distiller: the distiller's registered name, which starts the message.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is not an integer >= 0.

    Examples:
        >>> require_non_negative_int("warmup", 0, "dkd")
        0
        >>> require_non_negative_int("warmup", 2.5, "dkd")
        Traceback (most recent call last):
        crossmodal.errors.ConfigError: dkd: 'warmup' must be an integer >= 0, got 2.5
    """
    if not is_integer(value) or value < 0:
        raise ConfigError(f"{distiller}: '{name}' must be an integer >= 0, got {value!r}")
    return int(value)


def require_classifiers(student_classes: int, teacher_classes: int, distiller: str) -> int:
    """A logit distiller's encoders: classifier heads over the same classes (> 0) on both sides.

    Returns:
        the number of classes.

    Examples:
        >>> require_classifiers(10, 10, "kd")
        10
        >>> require_classifiers(10, 10, "kd") == require_classifiers(5, 5, "dkd") + 5
        True
    """
    if student_classes <= 0 or student_classes != teacher_classes:
        raise ConfigError(f"{distiller} needs classifier heads with the same number of classes on student "
                          f"({student_classes}) and teacher ({teacher_classes})")
    return student_classes


def require_target(target: object, has_labels: bool, distiller: str) -> str:
    """The ``target`` option of a distiller that needs each sample's target class: one of :data:`TARGETS`, and
    ``labels`` only in a run that has class labels.

    Examples:
        >>> require_target("labels", False, "dkd")
        Traceback (most recent call last):
        crossmodal.errors.ConfigError: dkd: 'target' is 'labels' but the run has no class labels (set loss.class_labels)
    """
    if not isinstance(target, str) or target not in TARGETS:
        raise ConfigError(f"{distiller}: 'target' must be one of {', '.join(map(repr, TARGETS))}, got {target!r}")
    if target == "labels" and not has_labels:
        raise ConfigError(f"{distiller}: 'target' is 'labels' but the run has no class labels (set loss.class_labels)")
    return target
