"""A PNG of a few test samples: the input modality, the ground truth and the prediction side by side."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from crossmodal.data.preview import label_palette
from crossmodal.files import atomic_output


def colorize(labels: np.ndarray, num_classes: int, ignore_index: Optional[int]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB: class c gets colour c + 1 of the fixed VOC palette (the data
    preview's colours), void (``ignore_index`` or any id outside [0, num_classes)) is black.

    Examples:
        >>> colorize(np.array([[0, 255]]), 2, 255)[0, 1].tolist()
        [0, 0, 0]
    """
    palette = label_palette(num_classes + 1)
    labels = labels.astype(np.int64)
    void = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        void |= labels == ignore_index
    tile = palette[np.where(void, 0, labels + 1)]
    tile[void] = 0
    return tile


def input_tile(image: np.ndarray) -> np.ndarray:
    """A normalised (C, H, W) input -> (H, W, 3) floats in [0, 1] for display: three channels as RGB, any
    other count as its first channel through the ``turbo`` colour map; each sample scaled by its own range."""
    import matplotlib

    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / max(high - low, 1e-6)
    if scaled.shape[0] == 3:
        return scaled.transpose(1, 2, 0)
    return matplotlib.colormaps["turbo"](scaled[0])[..., :3]


def write_segmentation_preview(path: str | os.PathLike, images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                               predictions: Sequence[np.ndarray], num_classes: int, ignore_index: Optional[int],
                               title: str = "") -> str:
    """Write ``path`` (PNG, atomically): one row per sample with input, ground truth and prediction.

    Args:
        path: the PNG to write.
        images: normalised (C, H, W) inputs.
        truths: (H, W) ground-truth class ids.
        predictions: (H, W) predicted class ids.
        num_classes: the label set's class count.
        ignore_index: its void value, drawn black.
        title: a line above the grid.

    Returns:
        ``path``.

    Examples:
        >>> write_segmentation_preview("preview.png", [x], [y], [p], 13, 255, "seg13, finetune")
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows + 0.4), squeeze=False)
    try:
        for row, (image, truth, predicted) in enumerate(zip(images, truths, predictions)):
            tiles = (input_tile(image), colorize(truth, num_classes, ignore_index),
                     colorize(predicted, num_classes, ignore_index))
            for column, (tile, name) in enumerate(zip(tiles, ("input", "ground truth", "prediction"))):
                axis = axes[row, column]
                axis.imshow(tile, interpolation="nearest")
                axis.set_xticks([])
                axis.set_yticks([])
                if row == 0:
                    axis.set_title(name, fontsize=9)
        if title:
            figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        with atomic_output(path, suffix=".png") as temporary:
            figure.savefig(temporary, format="png", dpi=80)
    finally:
        plt.close(figure)
    return os.fspath(path)
