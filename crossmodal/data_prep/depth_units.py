"""Whether converted depth lies at indoor distances, and which common unit would put it there.

A wrong ``--depth-scale`` passes silently otherwise: NYU's millimetre PNGs read with TUM RGB-D's 1/5000 m give a
median of 0.53 m instead of 2.65 m, and every depth metric after it is off by a factor of five. A scale may be
right for a sensor this module does not know, so the check warns; it never refuses.

The bounds are on the data set's median distance (the median of the frames' medians of valid pixels). The
sensors behind NYU-Depth V2, SUN RGB-D and ScanNet (Kinect v1 and v2, Asus Xtion, RealSense, Structure Sensor)
measure roughly 0.5-10 m, and most pixels of a room lie at 1-5 m: the 10 real NYU frames in the tests span
0.89-9.96 m, with frame medians of 1.7-4.3 m and a median of 2.65 m. A data set whose median lies below 1 m or
beyond 8 m is therefore either not of rooms (a table-top or outdoor set: then ignore the warning) or read in the
wrong unit. The common units tried are the ones the public RGB-D data sets store: millimetres (NYU's PNGs,
ScanNet, the sensors' own output), 1/5000 m (TUM RGB-D), 1/8 mm (SUN RGB-D's PNGs, whose millimetres are
bit-rotated by 3, i.e. x 8 below 8.19 m), 0.1 mm (RealSense's finer depth units) and metres (float images).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

INDOOR_MEDIAN_M = (1.0, 8.0)
TYPICAL_MEDIAN_M = 2.5  # NYU's is 2.65 m: of the common units that fit, the one landing nearest wins
COMMON_UNITS = (  # metres per stored unit, and who stores depth in it
    (0.001, "millimetres (NYU's, ScanNet's and most Kinect and RealSense PNGs)"),
    (0.0002, "1/5000 m (TUM RGB-D's PNGs)"),
    (0.000125, "1/8 mm (SUN RGB-D's bit-shifted PNGs)"),
    (0.0001, "0.1 mm (RealSense set to 100 um depth units)"),
    (1.0, "metres (float images)"),
)


class DepthMedian:
    """The median distance of a depth modality, from each frame's median of its valid (finite, > 0) pixels."""

    def __init__(self) -> None:
        self.frame_medians: list[float] = []

    def add(self, depth: np.ndarray) -> None:
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size:
            self.frame_medians.append(float(np.median(valid)))

    def median(self) -> Optional[float]:
        return float(np.median(self.frame_medians)) if self.frame_medians else None


def implausible_depth(origin: str, modality: str, median: Optional[float], scale: float,
                      default: bool) -> Optional[str]:
    """One line saying why ``median`` (metres, after ``scale``) is no indoor distance and which common unit would
    fit, or None when it fits (or there is no valid depth to judge)."""
    low, high = INDOOR_MEDIAN_M
    if median is None or low <= median <= high:
        return None
    given = f"the default --depth-scale {scale:g}" if default else f"--depth-scale {scale:g}"
    line = (f"{origin}: {modality} median {median:.2f} m after {given} looks too "
            f"{'near' if median < low else 'far'} for indoor scenes ({low:g}-{high:g} m)")
    stored = median / scale
    fitting = [(unit, words) for unit, words in COMMON_UNITS
               if not math.isclose(unit, scale) and low <= stored * unit <= high]
    if not fitting:
        return line + "; check --depth-scale (metres per stored unit)"
    unit, words = min(fitting, key=lambda fit: abs(math.log(stored * fit[0] / TYPICAL_MEDIAN_M)))
    return line + f"; as {words} it would be {stored * unit:.2f} m (--depth-scale {unit:g})"
