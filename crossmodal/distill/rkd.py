"""Relational knowledge distillation: match distances and angles among the batch's embeddings."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import require_non_negative
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


def pairwise_distances(embed: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """B x B Euclidean distances as RepDistiller's ``RKDLoss.pdist``: squared distances clamped at ``eps``,
    diagonal set to zero."""
    squares = embed.pow(2).sum(1)
    distances = (squares.unsqueeze(1) + squares.unsqueeze(0) - 2 * embed @ embed.t()).clamp(min=eps)
    if not squared:
        distances = distances.sqrt()
    diagonal = torch.eye(embed.shape[0], dtype=torch.bool, device=embed.device)
    return distances.masked_fill(diagonal, 0.0)


def normalised_distances(embed: torch.Tensor) -> torch.Tensor:
    """Distances divided by their mean over positive entries (the off-diagonal ones)."""
    distances = pairwise_distances(embed)
    return distances / distances[distances > 0].mean()


def angles(embed: torch.Tensor) -> torch.Tensor:
    """Flattened B^3 cosines of the angle at each sample i between (j - i) and (k - i) (zero where j or k is i)."""
    differences = F.normalize(embed.unsqueeze(0) - embed.unsqueeze(1), p=2, dim=2)
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


def rkd_losses(student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unweighted (distance, angle) smooth-L1 losses of RepDistiller's ``RKDLoss`` [0]."""
    student_embed = student_embed.reshape(student_embed.shape[0], -1)
    teacher_embed = teacher_embed.detach().reshape(teacher_embed.shape[0], -1)
    with torch.no_grad():
        teacher_distances = normalised_distances(teacher_embed)
        teacher_angles = angles(teacher_embed)
    distance = F.smooth_l1_loss(normalised_distances(student_embed), teacher_distances)
    angle = F.smooth_l1_loss(angles(student_embed), teacher_angles)
    return distance, angle


@register_distiller("rkd")
class RKD(Distiller):
    """Relational KD [0] as RepDistiller's ``RKDLoss`` [1], on the pooled embeddings.

    Distances and angles are relations among samples, so embeddings of any sizes pair without adaptation.
    A batch of one sample has no relation and gives 0 (still in the graph).

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        distance_weight: w_d, weight of the distance loss.
        angle_weight: w_a, weight of the angle loss.

    - [0] Relational Knowledge Distillation, Park et al., 2019, https://arxiv.org/abs/1904.05068
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, distance_weight: float = 25.0,
                 angle_weight: float = 50.0) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        self.distance_weight = require_non_negative("distance_weight", distance_weight, "rkd", finite=False)
        self.angle_weight = require_non_negative("angle_weight", angle_weight, "rkd", finite=False)

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(embedding=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        if student.embedding.shape[0] < 2:
            zero = student.embedding.sum() * 0.0
            return DistillResult(zero, {"distance": zero.detach(), "angle": zero.detach()})
        distance, angle = rkd_losses(student.embedding, teacher.embedding)
        loss = self.distance_weight * distance + self.angle_weight * angle
        return DistillResult(loss, {"distance": distance.detach(), "angle": angle.detach()})
