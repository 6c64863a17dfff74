"""Probabilistic knowledge transfer: match the batch's cosine-similarity distributions."""
from __future__ import annotations

from typing import Optional

import torch

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


def _conditional_probabilities(embed: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows of (cosine + 1) / 2 between samples, each normalised to sum to one."""
    norm = embed.pow(2).sum(1, keepdim=True).sqrt()
    embed = embed / (norm + eps)
    embed = torch.where(torch.isnan(embed), torch.zeros_like(embed), embed)
    similarity = (embed @ embed.t() + 1.0) / 2.0
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """RepDistiller's ``PKT.cosine_similarity_loss`` [0]: mean over the B x B entries of
    q * log((q + eps) / (p + eps)), with q the teacher's and p the student's conditional probabilities."""
    student_prob = _conditional_probabilities(student_embed.reshape(student_embed.shape[0], -1), eps)
    teacher_prob = _conditional_probabilities(teacher_embed.detach().reshape(teacher_embed.shape[0], -1), eps)
    return (teacher_prob * torch.log((teacher_prob + eps) / (student_prob + eps))).mean()


@register_distiller("pkt")
class PKT(Distiller):
    """Probabilistic knowledge transfer [0] with the cosine kernel, as RepDistiller's ``PKT`` [1], on the pooled
    embeddings; their sizes may differ (the compared distributions are over the batch).

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.

    - [0] Learning Deep Representations with Probabilistic Knowledge Transfer, Passalis & Tefas, 2018,
      https://arxiv.org/abs/1803.10837
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 30000.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(embedding=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        return DistillResult(pkt_loss(student.embedding, teacher.embedding))
