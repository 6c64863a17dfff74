"""Analytic ray-primitive intersections used by the synthetic scene renderer.

Every function intersects one shared ray origin (3,) with many ray directions (N, 3),
all expressed in the primitive's own frame, and returns the ray parameter ``t`` of the
nearest front-facing hit (``inf`` where the ray misses) and the outward unit normal
there (zeros where it misses). Directions need not be unit length, so ``t`` is in units
of the direction vector: the renderer uses directions with a unit forward component,
which makes ``t`` the z-depth directly.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-6
_TINY = 1e-12


def _safe_reciprocal(values: np.ndarray) -> np.ndarray:
    """1 / values with exact zeros nudged so that slab tests yield +-inf, not NaN."""
    return 1.0 / np.where(np.abs(values) < _TINY, _TINY, values)


def yaw_matrix(yaw: float) -> np.ndarray:
    """World-from-local rotation about the vertical (y) axis."""
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    return np.array([[cos_yaw, 0.0, sin_yaw], [0.0, 1.0, 0.0], [-sin_yaw, 0.0, cos_yaw]])


def intersect_room(
    origin: np.ndarray, directions: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit point of rays starting inside an axis-aligned box; also returns the exit axis."""
    reciprocal = _safe_reciprocal(directions)
    t_axes = np.maximum((low - origin) * reciprocal, (high - origin) * reciprocal)
    axis = t_axes.argmin(axis=1)
    rows = np.arange(len(directions))
    t = t_axes[rows, axis]
    normal = np.zeros_like(directions)
    normal[rows, axis] = -np.sign(directions[rows, axis])
    return t, normal, axis


def intersect_boxes(
    origin: np.ndarray, directions: np.ndarray, lows: np.ndarray, highs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest entry hit over K axis-aligned boxes (lows/highs of shape (K, 3)): slab test."""
    reciprocal = _safe_reciprocal(directions)
    t_low = (lows[:, None, :] - origin) * reciprocal
    t_high = (highs[:, None, :] - origin) * reciprocal
    t_entry_axes = np.minimum(t_low, t_high)
    t_entry = t_entry_axes.max(axis=2)
    t_exit = np.maximum(t_low, t_high).min(axis=2)
    t_entry = np.where((t_entry <= t_exit) & (t_entry > _EPS), t_entry, np.inf)
    rows = np.arange(len(directions))
    nearest_box = t_entry.argmin(axis=0) if len(lows) > 1 else np.zeros(len(directions), int)
    t = t_entry[nearest_box, rows]
    axis = t_entry_axes[nearest_box, rows].argmax(axis=1)
    normal = np.zeros_like(directions)
    normal[rows, axis] = np.where(np.isfinite(t), -np.sign(directions[rows, axis]), 0.0)
    return t, normal


def intersect_sphere(
    origin: np.ndarray, directions: np.ndarray, center: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Near root of |o + t d - c|^2 = r^2."""
    offset = origin - center
    a = np.einsum("ij,ij->i", directions, directions)
    half_b = directions @ offset
    c = offset @ offset - radius * radius
    discriminant = half_b * half_b - a * c
    t = (-half_b - np.sqrt(np.maximum(discriminant, 0.0))) / a
    t = np.where((discriminant >= 0) & (t > _EPS), t, np.inf)
    hit = np.isfinite(t)
    normal = (offset + np.where(hit, t, 0.0)[:, None] * directions) / radius
    return t, normal * hit[:, None]


def intersect_cylinder(
    origin: np.ndarray, directions: np.ndarray, radius: float, height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder on the floor (axis = local y, 0 <= y <= height) with a top cap.

    The bottom cap rests on the floor, so it is never visible and is skipped.
    """
    dx, dy, dz = directions[:, 0], directions[:, 1], directions[:, 2]
    ox, oy, oz = origin
    a = dx * dx + dz * dz
    half_b = ox * dx + oz * dz
    c = ox * ox + oz * oz - radius * radius
    discriminant = half_b * half_b - a * c
    t_side = (-half_b - np.sqrt(np.maximum(discriminant, 0.0))) / np.maximum(a, _TINY)
    y_side = oy + t_side * dy
    t_side = np.where((discriminant >= 0) & (t_side > _EPS) & (y_side >= 0) & (y_side <= height),
                      t_side, np.inf)
    t_cap = (height - oy) * _safe_reciprocal(dy)
    cap_x, cap_z = ox + t_cap * dx, oz + t_cap * dz
    t_cap = np.where((t_cap > _EPS) & (cap_x * cap_x + cap_z * cap_z <= radius * radius), t_cap, np.inf)
    on_cap = t_cap < t_side
    t = np.where(on_cap, t_cap, t_side)
    hit = np.isfinite(t)
    t_finite = np.where(hit, t, 0.0)
    normal = np.stack([(ox + t_finite * dx) / radius, np.zeros_like(dx), (oz + t_finite * dz) / radius], axis=1)
    normal[on_cap] = (0.0, 1.0, 0.0)
    return t, normal * hit[:, None]


def intersect_cone(
    origin: np.ndarray, directions: np.ndarray, radius: float, height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cone, base radius at y = 0 (on the floor), apex at y = height.

    Implicit surface x^2 + z^2 = k^2 (height - y)^2 with k = radius / height, clipped to
    0 <= y <= height; the quadratic describes a double cone, so both roots are checked.
    """
    dx, dy, dz = directions[:, 0], directions[:, 1], directions[:, 2]
    ox, oy, oz = origin
    k2 = (radius / height) ** 2
    apex_gap = height - oy
    a = dx * dx + dz * dz - k2 * dy * dy
    half_b = ox * dx + oz * dz + k2 * apex_gap * dy
    c = ox * ox + oz * oz - k2 * apex_gap * apex_gap
    discriminant = half_b * half_b - a * c
    root = np.sqrt(np.maximum(discriminant, 0.0))
    safe_a = np.where(np.abs(a) < _TINY, _TINY, a)
    root_1, root_2 = (-half_b - root) / safe_a, (-half_b + root) / safe_a
    t_candidates = np.stack([np.minimum(root_1, root_2), np.maximum(root_1, root_2)])
    y = oy + t_candidates * dy
    valid = (discriminant >= 0) & (t_candidates > _EPS) & (y >= 0) & (y <= height)
    t_candidates = np.where(valid, t_candidates, np.inf)
    t = t_candidates.min(axis=0)
    hit = np.isfinite(t)
    t_finite = np.where(hit, t, 0.0)
    gradient = np.stack(
        [ox + t_finite * dx, k2 * (apex_gap - t_finite * dy), oz + t_finite * dz], axis=1)
    gradient /= np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), _TINY)
    return t, gradient * hit[:, None]
