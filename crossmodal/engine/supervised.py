"""The supervised task: an encoder (and a segmentation decoder) trained with image-level and/or per-pixel labels.

It is the task of ``crossmodal train-teacher`` and, with a frozen encoder, of ``crossmodal segment``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F

from crossmodal.runtime import all_reduce_sum
from crossmodal.engine.confusion import confusion_matrix, segmentation_scores
from crossmodal.engine.task import Task
from crossmodal.models.encoder import Encoder
from crossmodal.models.segmentation import SegmentationHead


def masked_cross_entropy(scores: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``ignore_index``; 0 (not NaN) when there are none."""
    total = F.cross_entropy(scores.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


class SupervisedTask(Task):
    """Encoder (+ segmentation decoder) with cross-entropy on the labels that are configured.

    Loss = CE(class logits, ``classes``) + ``segmentation_weight`` x CE(pixel scores, ``segmentation``); class -1
    and the segmentation's ``ignore_index`` are left out. Evaluation reports top-1 and/or pixel accuracy,
    mean class accuracy and mIoU, from counts summed over every rank.

    Args:
        encoder: the network being trained (its classifier has the class count when ``classes`` is set).
        modality: the input's key in each batch.
        classes: name of the class label set, or None.
        segmentation: name of the segmentation label set, or None.
        num_segmentation_classes: its class count.
        ignore_index: its void value.
        segmentation_weight: weight of the per-pixel term.
        decoder_channels: width of the :class:`SegmentationHead`.
    """

    def __init__(self, encoder: Encoder, modality: str, classes: Optional[str] = None,
                 segmentation: Optional[str] = None, num_segmentation_classes: int = 0, ignore_index: int = 255,
                 segmentation_weight: float = 1.0, decoder_channels: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = modality
        self.classes = classes
        self.segmentation = segmentation
        self.ignore_index = ignore_index
        self.segmentation_weight = segmentation_weight
        self.head = (SegmentationHead(encoder.spec, num_segmentation_classes, decoder_channels)
                     if segmentation else None)

    def may_leave_parameters_unused(self) -> bool:
        # a classifier that no loss term reads (num_classes set without task.classes) gets no gradient
        return self.encoder.num_classes > 0 and not self.classes

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = batch[self.modality]
        out = self.encoder(image)
        terms: dict[str, torch.Tensor] = {}
        loss = image.new_zeros((), dtype=torch.float32)
        if self.classes:
            terms["ce"] = masked_cross_entropy(out.logits, batch[self.classes], -1)
            loss = loss + terms["ce"]
        if self.head is not None:
            scores = self.head(out.features, image.shape[-2:])
            terms["seg_ce"] = masked_cross_entropy(scores, batch[self.segmentation], self.ignore_index)
            loss = loss + self.segmentation_weight * terms["seg_ce"]
        return loss, {key: value.detach() for key, value in terms.items()}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        correct = counted = None
        confusion = None
        for batch in batches:
            image = batch[self.modality]
            out = self.encoder(image)
            if self.classes:
                target = batch[self.classes]
                labelled = target >= 0
                hits = (out.logits.argmax(1) == target) & labelled
                correct = hits.sum() + (0 if correct is None else correct)
                counted = labelled.sum() + (0 if counted is None else counted)
            if self.head is not None:
                predicted = self.head(out.features, image.shape[-2:]).argmax(1)
                part = confusion_matrix(predicted, batch[self.segmentation], self.head.num_classes,
                                        self.ignore_index)
                confusion = part if confusion is None else confusion + part
        metrics: dict[str, float] = {}
        device = next(self.parameters()).device
        if self.classes:
            counts = all_reduce_sum(torch.stack([torch.as_tensor(correct or 0, device=device),
                                                 torch.as_tensor(counted or 0, device=device)]).long())
            if int(counts[1]) > 0:  # an evaluation split without class labels has no top-1
                metrics["top1"] = float(counts[0]) / int(counts[1])
        if self.head is not None:
            if confusion is None:
                confusion = torch.zeros(self.head.num_classes, self.head.num_classes, dtype=torch.long,
                                        device=device)
            metrics.update(segmentation_scores(all_reduce_sum(confusion).cpu()))
        return metrics
