"""Classification and segmentation metrics from accumulated counts (exact under any batching or sharding)."""
from __future__ import annotations

import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(num_classes x num_classes) int64 counts, rows = true class, columns = predicted; targets equal to
    ``ignore_index`` (or outside [0, num_classes)) are left out.

    Raises:
        ValueError: shapes that differ, or a prediction outside [0, num_classes) at a counted pixel (it fits
            no column).
    """
    if predicted.shape != target.shape:
        raise ValueError(f"confusion_matrix: predictions {tuple(predicted.shape)} and targets "
                         f"{tuple(target.shape)} differ in shape")
    target = target.reshape(-1).long()
    predicted = predicted.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    predicted = predicted[keep]
    if predicted.numel() and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(f"confusion_matrix: predictions must lie in [0, {num_classes}), got values from "
                         f"{int(predicted.min())} to {int(predicted.max())}")
    flat = target[keep] * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy, mean class accuracy and mIoU over the classes present in the ground truth.

    A class absent from the ground truth has no defined accuracy or IoU and is left out of the means.
    """
    confusion = confusion.double()
    true_pixels = confusion.sum(1)
    predicted_pixels = confusion.sum(0)
    correct = confusion.diagonal()
    present = true_pixels > 0
    total = float(true_pixels.sum())
    union = true_pixels + predicted_pixels - correct
    iou = correct[present] / union[present]
    accuracy = correct[present] / true_pixels[present]
    return {"pixel_acc": float(correct.sum()) / total if total else float("nan"),
            "mean_class_acc": float(accuracy.mean()) if present.any() else float("nan"),
            "miou": float(iou.mean()) if present.any() else float("nan")}


def per_class_iou(confusion: torch.Tensor) -> list[float | None]:
    """IoU of each class (true positives over the union of true and predicted pixels), None for a class absent
    from the ground truth (its IoU is undefined; a prediction of it elsewhere still lowers the other classes').

    Examples:
        >>> per_class_iou(torch.tensor([[2, 1, 0], [1, 3, 0], [0, 0, 0]]))
        [0.5, 0.6, None]
    """
    confusion = confusion.double()
    true_pixels = confusion.sum(1)
    union = true_pixels + confusion.sum(0) - confusion.diagonal()
    return [float(confusion[c, c] / union[c]) if true_pixels[c] > 0 else None for c in range(len(confusion))]
