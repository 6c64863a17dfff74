"""Correlation congruence, in the form RepDistiller ships: on linear embeddings of the pooled features."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import require_positive_int
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


def cc_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``Correlation`` [1]: with delta = |e_s - e_t|, mean over consecutive sample pairs of
    sum_d delta[i, d] * delta[i + 1, d]. A batch of one has no pair and gives 0 (still in the graph)."""
    delta = (student_embed - teacher_embed).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_distiller("cc")
class CC(Distiller):
    """Correlation congruence [0] exactly as RepDistiller's ``Correlation`` [1] (code its authors had from the
    paper's authors), which differs from the paper's kernel formulation.

    Both pooled embeddings go through a trainable linear map to ``feat_dim`` (RepDistiller's ``LinearEmbed``,
    no normalisation); the teacher's map trains too, on the detached teacher embedding.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        feat_dim: size of the common embedding.

    - [0] Correlation Congruence for Knowledge Distillation, Peng et al., 2019, https://arxiv.org/abs/1904.01802
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 0.02

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, feat_dim: int = 128) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        require_positive_int("feat_dim", feat_dim, "cc")
        self.embed_student = nn.Linear(student.embed_dim, feat_dim)
        self.embed_teacher = nn.Linear(teacher.embed_dim, feat_dim)

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(embedding=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        student_embed = self.embed_student(student.embedding.flatten(1))
        teacher_embed = self.embed_teacher(teacher.embedding.detach().flatten(1))
        return DistillResult(cc_loss(student_embed, teacher_embed))
