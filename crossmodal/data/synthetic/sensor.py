"""The depth sensor of the synthetic scenes: a Kinect-like noise and hole model applied to clean depth.

References:
    - [0] Khoshelham, Elberink, Accuracy and Resolution of Kinect Depth Data, Sensors 2012 (noise ~ z^2)
"""
from __future__ import annotations

import numpy as np


def _dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def sensor_depth(rng: np.random.Generator, depth: np.ndarray, cos_incidence: np.ndarray,
                 surface: np.ndarray, max_depth: float) -> np.ndarray:
    """Kinect-like raw depth: depth-dependent noise, holes at occlusion edges, grazing angles, blobs.

    ``surface`` holds a surface id per pixel, ``cos_incidence`` the cosine between ray and normal.

    Only jumps between different surfaces count as occlusion edges: on a floor seen at a
    grazing angle, neighbouring pixels also differ by decimetres but a real sensor sees it.
    """
    size = depth.shape[0]
    raw = depth + rng.standard_normal(depth.shape) * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
    threshold = rng.uniform(0.1, 0.2)
    holes = np.zeros(depth.shape, bool)
    # The structured-light shadow falls on the farther side of a depth jump.
    step_x = np.where(surface[:, 1:] != surface[:, :-1], np.diff(depth, axis=1), 0.0)
    step_y = np.where(surface[1:] != surface[:-1], np.diff(depth, axis=0), 0.0)
    holes[:, 1:] |= step_x > threshold
    holes[:, :-1] |= step_x < -threshold
    holes[1:] |= step_y > threshold
    holes[:-1] |= step_y < -threshold
    for _ in range(max(1, size // 64)):
        holes |= _dilate(holes) & (rng.random(depth.shape) < 0.5)
    holes |= cos_incidence < rng.uniform(0.08, 0.15)
    rows, columns = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(0, 4)):
        center_row, center_column = rng.uniform(0, size, 2)
        radius_row, radius_column = rng.uniform(0.8, 2.5, 2) * size / 64
        holes |= ((rows - center_row) / radius_row) ** 2 + ((columns - center_column) / radius_column) ** 2 <= 1
    holes |= raw >= max_depth
    raw[holes] = 0.0
    return raw.astype(np.float32)
