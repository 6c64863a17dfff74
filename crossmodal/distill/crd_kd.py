"""CRD+KD: the paper's strongest combination, CRD on the embeddings plus Hinton's KD on the logits.

- [0] Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020 (Table 1, "CRD+KD").
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import require_non_negative
from crossmodal.distill.registry import create_distiller, register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


@register_distiller("crd+kd")
class CRDPlusKD(Distiller):
    """``crd_weight`` x CRD + ``kd_weight`` x KD (RepDistiller's CRD+KD run: 0.8 and 1).

    Args:
        crd_weight: weight of the CRD loss (0.8), a finite number >= 0.
        kd_weight: weight of the KD loss (1.0), a finite number >= 0.
        crd: options of the CRD part (see :class:`~crossmodal.distill.crd.CRD`), a mapping or None.
        kd: options of the KD part (see :class:`~crossmodal.distill.kd.KD`), a mapping or None.

    Raises:
        ConfigError: a weight that is not a finite non-negative number, part options that are not a mapping, or
            anything CRD or KD refuses.
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, crd_weight: float = 0.8, kd_weight: float = 1.0,
                 crd: Optional[dict[str, Any]] = None, kd: Optional[dict[str, Any]] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        self.crd_weight = require_non_negative("crd_weight", crd_weight, "crd+kd")
        self.kd_weight = require_non_negative("kd_weight", kd_weight, "crd+kd")
        for name, options in (("crd", crd), ("kd", kd)):
            if options is not None and (not isinstance(options, Mapping)
                                        or not all(isinstance(key, str) for key in options)):
                raise ConfigError(f"crd+kd: '{name}' must be a mapping of {name} options or None, got {options!r}")
        self.crd = create_distiller("crd", student, teacher, num_samples=num_samples, labels=labels, **(crd or {}))
        self.kd = create_distiller("kd", student, teacher, num_samples=num_samples, labels=labels, **(kd or {}))

    def teacher_needs(self) -> TeacherNeeds:
        return self.crd.teacher_needs() | self.kd.teacher_needs()

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        crd = self.crd(student, teacher, index, labels)
        kd = self.kd(student, teacher, index, labels)
        logs = {f"crd/{key}": value for key, value in crd.logs.items()}
        logs.update({f"kd/{key}": value for key, value in kd.logs.items()})
        logs.update(crd=crd.loss.detach(), kd=kd.loss.detach())
        return DistillResult(self.crd_weight * crd.loss + self.kd_weight * kd.loss, logs)
