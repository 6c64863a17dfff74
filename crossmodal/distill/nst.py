"""Neuron selectivity transfer: match the distributions of channel activation patterns by a kernel MMD."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from crossmodal.distill.spatial import default_inner_stages, match_spatial
from crossmodal.distill.base import StagewiseDistiller, stage_pairs
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import FeatureSpec


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B x C_b x C_a matrix of (a_j . b_i)^2 between the rows of a (B x C_a x N) and b (B x C_b x N).

    Same values and layout as RepDistiller's broadcast ``poly_kernel`` [0], by a batched matrix product that
    does not build the B x C_b x C_a x N intermediate.
    """
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the polynomial kernel (d=2, c=0) between the l2-normalised channel patterns [0, 1];
    the full loss, with the constant teacher-teacher term included (detached)."""
    student_map, teacher_map = match_spatial(student_map, teacher_map)
    student_rows = F.normalize(student_map.flatten(2), dim=2)
    teacher_rows = F.normalize(teacher_map.detach().flatten(2), dim=2)
    return (poly_kernel(teacher_rows, teacher_rows).mean().detach() + poly_kernel(student_rows, student_rows).mean()
            - 2 * poly_kernel(student_rows, teacher_rows).mean())


@register_distiller("nst")
class NST(StagewiseDistiller):
    """Neuron selectivity transfer [0] as RepDistiller's ``NSTLoss`` [1], summed over stage pairs.

    Channel counts may differ (the MMD compares sets of channel patterns); spatial sizes are matched by
    average-pooling the larger map, height and width separately.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        stages: indices into the deepest-aligned stage list (:func:`~crossmodal.distill.base.stage_pairs`);
            None means every paired stage except the shallowest (RepDistiller's ``feat[1:-1]``).

    - [0] Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, Huang & Wang, 2017,
      https://arxiv.org/abs/1707.01219
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 50.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, stages: Optional[Sequence[int]] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        depth = min(student.num_stages, teacher.num_stages)
        self.pairs = stage_pairs(student, teacher, stages, default_inner_stages(depth), "nst")

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return nst_loss(student_map, teacher_map)
