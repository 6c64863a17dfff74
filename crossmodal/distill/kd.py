"""Knowledge distillation on softened logits (Hinton et al.)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import require_classifiers, require_positive
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, summed over classes and averaged over the batch [0, 1]."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="sum") * temperature ** 2 / student_logits.shape[0]


@register_distiller("kd")
class KD(Distiller):
    """Soft-target distillation: the student matches the teacher's temperature-softened class distribution.

    RepDistiller [1] trains KD with weight 0.9 on this loss plus 0.1 on the cross-entropy with the labels;
    ``default_weight`` is that 0.9, and the cross-entropy (where labels exist) is the trainer's job.
    Both encoders need classifier heads over the same classes.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        temperature: T, the softmax temperature, a finite positive number; the loss is scaled by T^2 so that its
            gradients keep their size.

    Examples:
        >>> kd = KD(student_spec, teacher_spec, num_samples=1000, temperature=4.0)
        >>> kd(student_out, teacher_out, index).loss

    - [0] Distilling the Knowledge in a Neural Network, Hinton et al., 2015, https://arxiv.org/abs/1503.02531
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 0.9

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, temperature: float = 4.0) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        require_classifiers(student.num_classes, teacher.num_classes, "kd")
        self.temperature = require_positive("temperature", temperature, "kd")

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        if student.logits is None or teacher.logits is None:
            raise ValueError("kd: both student and teacher outputs must carry logits")
        teacher_logits = teacher.logits.detach()
        loss = kd_loss(student.logits, teacher_logits, self.temperature)
        agreement = (student.logits.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
        return DistillResult(loss, {"agreement": agreement})
