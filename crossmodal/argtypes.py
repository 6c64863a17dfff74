"""argparse types shared by the verbs and the converters (a bottom layer: imports nothing of crossmodal)."""
from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(minimum: int, meaning: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else a usage error saying ``meaning``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {meaning} integer, got '{text}'")
        return value

    parse.__name__ = f"{meaning} integer"  # argparse names the type by it in its messages
    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")
