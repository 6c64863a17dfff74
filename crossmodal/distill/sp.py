"""Similarity-preserving distillation: match the batch's normalised sample-similarity matrices."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from crossmodal.distill.base import StagewiseDistiller, stage_pairs
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import FeatureSpec


def similarity_matrix(feature_map: torch.Tensor) -> torch.Tensor:
    """B x B Gram matrix of the flattened samples, each row l2-normalised."""
    flat = feature_map.reshape(feature_map.shape[0], -1)
    return F.normalize(flat @ flat.t())


def sp_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """||G_s - G_t||_F^2 / B^2 [0, 1]; any channel count or spatial size (the Gram matrix is B x B)."""
    batch = student_map.shape[0]
    return (similarity_matrix(student_map) - similarity_matrix(teacher_map)).pow(2).sum() / batch ** 2


@register_distiller("sp")
class SP(StagewiseDistiller):
    """Similarity-preserving KD [0] as RepDistiller's ``Similarity`` [1], on the last conv map (``feat[-2]``).

    The loss compares B x B matrices, so stages of any channels and size pair without adaptation.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        stages: indices into the deepest-aligned stage list (:func:`~crossmodal.distill.base.stage_pairs`),
            losses summed; None means the deepest stage only, as RepDistiller.

    - [0] Similarity-Preserving Knowledge Distillation, Tung & Mori, 2019, https://arxiv.org/abs/1907.09682
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 3000.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, stages: Optional[Sequence[int]] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        self.pairs = stage_pairs(student, teacher, stages, [-1], "sp")

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return sp_loss(student_map, teacher_map)
