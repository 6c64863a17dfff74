"""Spatial helpers shared by the feature-map distillers: make a student and a teacher map the same size."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive-average-pool a B x C x H x W map to ``size`` (H, W); returned unchanged when already that size."""
    if tuple(feature_map.shape[-2:]) == tuple(size):
        return feature_map
    return F.adaptive_avg_pool2d(feature_map, size)


def match_spatial(student_map: torch.Tensor, teacher_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two maps to a common H x W by pooling the larger one down, as RepDistiller does [0].

    Height and width are handled separately, so non-square maps work, and when the student is taller but the
    teacher wider, each is pooled along the axis where it is the larger one. Channels are left alone.

    Args:
        student_map: B x C_s x H_s x W_s.
        teacher_map: B x C_t x H_t x W_t.

    Returns:
        Both maps at (min(H_s, H_t), min(W_s, W_t)).

    - [0] RepDistiller, Tian et al., 2020, https://github.com/HobbitLong/RepDistiller (``distiller_zoo/AT.py``)
    """
    size = (min(student_map.shape[-2], teacher_map.shape[-2]), min(student_map.shape[-1], teacher_map.shape[-1]))
    return pool_to(student_map, size), pool_to(teacher_map, size)


def default_inner_stages(depth: int) -> list[int]:
    """RepDistiller's ``feat[1:-1]`` in aligned-stage terms: every paired stage except the shallowest (the stem
    of a timm ResNet), or the only stage when just one is paired."""
    return list(range(1, depth)) or [0]
