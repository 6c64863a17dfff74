"""Checks shared by the distillers' option validation."""
from __future__ import annotations

import math
import numbers


def is_finite_number(value: object) -> bool:
    """Whether an option is a real number (not a bool) with a finite float value: ``inf``, ``nan``, a string or
    an int too large for a float are not."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
