"""The task of ``crossmodal distill``: a modality-B student trained from a frozen modality-A teacher."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from crossmodal.distill.base import Distiller
from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.engine import Task, masked_cross_entropy
from crossmodal.runtime import all_reduce_sum
from crossmodal.models.encoder import Encoder
from crossmodal.models.outputs import EncoderOutput
from crossmodal.models.teacher import FrozenTeacher


class TeacherView:
    """The teacher's outputs for a batch: looked up in the feature cache by sample index when there is one,
    otherwise computed by the frozen teacher from the batch's teacher modality.

    Not a module: the teacher is no part of the trained state or of the checkpoints (its fingerprint is in the
    run's model card).
    """

    def __init__(self, teacher: FrozenTeacher, modality: str, cache: Optional[TeacherFeatureCache] = None) -> None:
        self.teacher = teacher
        self.modality = modality
        self.cache = cache

    def __call__(self, batch: Mapping[str, Any]) -> EncoderOutput:
        if self.cache is not None:
            return self.cache.lookup(batch["index"])
        return self.teacher(batch[self.modality])


class DistillTask(Task):
    """Loss = ``ce`` x CE(student logits, class labels) + sum over distillers of weight x distiller loss.

    KD is one of the distillers (``loss.kd`` is its weight), so CRD+KD, CRD+AT or KD alone are all one
    config. Every distiller's state (CRD's memory banks, normalisation constants and sampler) is a submodule
    of this task, hence in every checkpoint.

    Args:
        student: the encoder being trained.
        modality: the student's input key in each batch.
        teacher: where the teacher's outputs come from.
        distillers: the distillers by name.
        weights: the weight of each distiller, by name.
        ce_weight: weight of the cross-entropy with ``class_labels`` (0: the labels are not used by it).
        class_labels: name of the batch's class labels, or None.
    """

    def __init__(self, student: Encoder, modality: str, teacher: TeacherView, distillers: Mapping[str, Distiller],
                 weights: Mapping[str, float], ce_weight: float = 0.0, class_labels: Optional[str] = None) -> None:
        super().__init__()
        self.student = student
        self.modality = modality
        self.teacher = teacher
        self.distillers = nn.ModuleDict(distillers)
        self.weights = dict(weights)
        self.ce_weight = ce_weight
        self.class_labels = class_labels
        # For DDP: a student classifier that no loss term reads gets no gradient, nor do the stages past the
        # deepest one a term reads when none reads the embedding or logits (FitNet's hint at stage 2).
        needs = [d.teacher_needs() for d in self.distillers.values()]
        reads_logits = ce_weight > 0 or any(n.logits for n in needs)
        last_stage = student.spec.num_stages - 1
        paired = [student_stage for d in self.distillers.values() for student_stage, _ in getattr(d, "pairs", ())]
        reads_last_stage = reads_logits or any(n.embedding for n in needs) or last_stage in paired
        self._leaves_unused = (student.num_classes > 0 and not reads_logits) or not reads_last_stage

    def may_leave_parameters_unused(self) -> bool:
        return self._leaves_unused

    def set_epoch(self, epoch: int) -> None:
        for distiller in self.distillers.values():
            distiller.set_epoch(epoch)

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student = self.student(batch[self.modality])
        teacher = self.teacher(batch) if len(self.distillers) else None
        labels = batch[self.class_labels] if self.class_labels else None
        logs: dict[str, torch.Tensor] = {}
        loss = student.embedding.new_zeros((), dtype=torch.float32)
        if self.ce_weight > 0:
            logs["ce"] = masked_cross_entropy(student.logits, labels, -1)
            loss = loss + self.ce_weight * logs["ce"]
        for name, distiller in self.distillers.items():
            result = distiller(student, teacher, batch["index"], labels)
            logs[name] = result.loss.detach()
            logs.update({f"{name}/{key}": value for key, value in result.logs.items()})
            loss = loss + self.weights[name] * result.loss.float()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """The student's top-1 on the class labels, when it has a classifier and labels are configured."""
        if not self.class_labels or self.student.num_classes == 0:
            return {}
        device = next(self.student.parameters()).device
        counts = torch.zeros(2, dtype=torch.long, device=device)
        for batch in batches:
            target = batch[self.class_labels]
            labelled = target >= 0
            predicted = self.student(batch[self.modality]).logits.argmax(1)
            counts += torch.stack([((predicted == target) & labelled).sum(), labelled.sum()])
        counts = all_reduce_sum(counts)
        return {"student_top1": float(counts[0]) / int(counts[1])} if int(counts[1]) > 0 else {}
