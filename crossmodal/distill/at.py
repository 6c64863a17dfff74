"""Attention transfer: match normalised spatial attention maps of paired stages."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from crossmodal.distill.spatial import default_inner_stages, match_spatial
from crossmodal.distill.base import StagewiseDistiller, stage_pairs
from crossmodal.distill.options import require_positive
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import FeatureSpec


def attention_map(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """B x (H W) l2-normalised attention: the mean over channels of f^p (``f.pow(p)``, as RepDistiller [1]).

    This equals the paper's |f|^p [0] for an even ``p`` (the default 2) or non-negative maps (after a ReLU); for a
    backbone with negative activations (GELU, no final ReLU) and an odd ``p`` the map is signed, and a
    non-integer ``p`` gives NaN at negative activations.
    """
    return F.normalize(feature_map.pow(p).mean(1).reshape(feature_map.shape[0], -1))


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float) -> torch.Tensor:
    """Mean squared difference of the two attention maps, after pooling the larger map to the smaller."""
    student_map, teacher_map = match_spatial(student_map, teacher_map)
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


@register_distiller("at")
class AT(StagewiseDistiller):
    """Attention transfer [0] as in RepDistiller's ``Attention`` [1]: summed over stage pairs.

    Channel counts may differ freely (the attention map averages over channels); spatial sizes are matched by
    average-pooling the larger map, height and width separately.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        p: exponent of the attention map, a finite positive number (see :func:`attention_map` for odd values).
        stages: indices into the deepest-aligned stage list (:func:`~crossmodal.distill.base.stage_pairs`);
            None means every paired stage except the shallowest, RepDistiller's ``feat[1:-1]`` (with a timm
            ResNet, stage 0 is the stride-2 stem).

    - [0] Paying More Attention to Attention, Zagoruyko & Komodakis, 2017, https://arxiv.org/abs/1612.03928
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 1000.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, p: float = 2.0,
                 stages: Optional[Sequence[int]] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        self.p = require_positive("p", p, "at")
        depth = min(student.num_stages, teacher.num_stages)
        self.pairs = stage_pairs(student, teacher, stages, default_inner_stages(depth), "at")

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return at_loss(student_map, teacher_map, self.p)
