"""A classifier head for a frozen pretrained teacher, fitted on its own modality's labels.

Supervised cross-modal distillation compares logit distillers (KD, DKD, MLLD, C2KD) whose teacher predicts the
student's classes. A network pretrained elsewhere (ImageNet EfficientNet-Lite0) predicts other classes; its frozen
backbone is kept, and its classifier is replaced by a linear head over the data's classes, fitted on the teacher's
pooled embeddings of the training split (modality A and its labels; the student's modality is never read). The
head is the linear probe's classifier (:func:`~crossmodal.eval.probe.fit_classifier`), with ``C`` chosen on a
holdout of the training split by its log-likelihood: the head's softened probabilities are what the distillers
read, so they should be calibrated, and accuracy alone ties between scales of logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from crossmodal.data import PairedDataset
from crossmodal.data.classes import class_names
from crossmodal.data.dataset import collate
from crossmodal.data.format import read_layout
from crossmodal.errors import DataError
from crossmodal.eval.checkpoints import load_encoder
from crossmodal.eval.features import extract_features
from crossmodal.eval.probe import fit_classifier
from crossmodal.runtime import resolve_device


@dataclass
class FittedHead:
    """The head (``logits = embedding @ weight.T + bias``, float32 on the CPU), its classes and how it was fitted."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]
    record: dict[str, Any]


def fit_head(teacher: str, data: str, labels: str, *, modality: Optional[str] = None, seed: int = 0,
             train_split: str = "train", test_split: str = "test", holdout_fraction: float = 0.2,
             batch_size: int = 64, device: str = "auto") -> FittedHead:
    """Fit a linear head over ``labels``' classes on the frozen ``teacher``'s pooled embedding of ``train_split``
    (read as ``modality``, default the teacher's own) and score it on ``test_split``.

    Raises:
        DataError: ``labels`` is not a class label set of ``data``, or the training split has fewer than two of
            its classes.
    """
    layout = read_layout(data)
    info = layout.labels.get(labels)
    if info is None or info.type != "class":
        choices = sorted(name for name, label in layout.labels.items() if label.type == "class")
        raise DataError(data, f"no class label set '{labels}' for the teacher's head; it has {choices or 'none'}")
    loaded = load_encoder(teacher)
    modality = modality or loaded.modality
    where = resolve_device(device)
    embeddings = {}
    for split in (train_split, test_split):
        loader = DataLoader(PairedDataset(data, split, modalities=[modality], labels=[labels]),
                            batch_size=batch_size, shuffle=False, collate_fn=collate)
        extracted = extract_features(loaded.encoder, loader, modality, labels, stages=[], device=where)
        embeddings[split] = (extracted.stages[-1].values.float().cpu(), torch.as_tensor(extracted.labels).long())
    train_x, train_y = embeddings[train_split]
    if len(set(train_y.tolist())) < 2:
        raise DataError(data, f"split '{train_split}' has fewer than 2 classes of '{labels}'; a head needs 2")
    head = fit_classifier(train_x, train_y, info.num_classes, holdout_fraction=holdout_fraction, seed=seed,
                          by="log_likelihood")
    test_x, test_y = embeddings[test_split]
    test_top1 = float((head.predict(test_x) == test_y).double().mean()) if len(test_y) else None
    record = {"fitted_on": {"data": data, "labels": labels, "split": train_split, "modality": modality,
                            "samples": int(len(train_y))},
              "method": "linear probe on the frozen pooled embedding (L2 multinomial logistic regression), C chosen "
                        "by log-likelihood on a stratified holdout of the training split",
              "C": head.c, "holdout_fraction": holdout_fraction, "seed": seed, "converged": head.converged,
              "holdout_top1": head.holdout_top1, "test_split": test_split, "test_top1": test_top1}
    return FittedHead(head.weight.cpu(), head.bias.cpu(), class_names(info, list(range(info.num_classes))), record)
