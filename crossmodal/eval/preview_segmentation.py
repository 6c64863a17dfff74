"""A PNG of a few test samples: the input modality, the ground truth and the prediction side by side."""
from __future__ import annotations

import io
import os
from typing import Any, Optional, Sequence

import numpy as np

from crossmodal.data.modalities import MAX_DEPTH_M
from crossmodal.data.preview import label_palette
from crossmodal.data.format import DEPTH_KINDS
from crossmodal.files import atomic_output

VOID_LABEL = "void (not scored)"


def colorize(labels: np.ndarray, num_classes: int, ignore_index: Optional[int]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB: class c gets colour c + 1 of the fixed VOC palette (the data
    preview's colours), void (``ignore_index`` or any id outside [0, num_classes)) is black.

    Examples:
        >>> colorize(np.array([[0, 255]]), 2, 255)[0, 1].tolist()
        [0, 0, 0]
    """
    palette = label_palette(num_classes + 1)
    labels = labels.astype(np.int64)
    void = void_mask(labels, num_classes, ignore_index)
    tile = palette[np.where(void, 0, labels + 1)]
    tile[void] = 0
    return tile


def void_mask(labels: np.ndarray, num_classes: int, ignore_index: Optional[int]) -> np.ndarray:
    """Where ``labels`` is void: ``ignore_index`` or any id outside [0, num_classes) (not scored)."""
    labels = np.asarray(labels)
    void = (labels < 0) | (labels >= num_classes)
    return void | (labels == ignore_index) if ignore_index is not None else void


def input_tile(image: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """A normalised (C, H, W) input -> (H, W, 3) floats in [0, 1] for display: three channels as RGB, any
    other count as its first channel through the ``turbo`` colour map; each sample scaled by its own robust
    range (``percentiles`` of its values, so a few outliers do not wash out the frame)."""
    import matplotlib

    image = image.astype(np.float32)
    low, high = _robust_range(image if image.shape[0] == 3 else image[0], percentiles)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    if scaled.shape[0] == 3:
        return scaled.transpose(1, 2, 0)
    return matplotlib.colormaps["turbo"](scaled[0])[..., :3]


def _robust_range(values: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0)) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if high - low < 1e-6:
        low, high = float(finite.min()), float(finite.max())
    return low, high


def to_metres(values: np.ndarray | float) -> np.ndarray | float:
    """Invert the depth normalisation ([0, MAX_DEPTH_M] m -> [-1, 1])."""
    return (np.asarray(values) + 1.0) / 2.0 * MAX_DEPTH_M if isinstance(values, np.ndarray) \
        else (values + 1.0) / 2.0 * MAX_DEPTH_M


def present_classes(labels: Sequence[np.ndarray], num_classes: int, ignore_index: Optional[int]) -> list[int]:
    """The class ids in [0, num_classes) that occur in ``labels`` (void excluded), ascending."""
    seen: set[int] = set()
    for array in labels:
        seen.update(int(v) for v in np.unique(array))
    return sorted(c for c in seen if 0 <= c < num_classes and c != ignore_index)


def _run_context(path: str | os.PathLike) -> dict:
    """What the run folder beside ``path`` says (its ``config.yaml`` ``segment`` section): the method name,
    the label set's class names and the modality; empty when there is no such file."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), "config.yaml")
    try:
        import yaml

        with open(config_path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
        segment = tree.get("segment") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(segment, dict) or not segment:
        return {}
    context: dict = {"modality": segment.get("modality"), "protocol": segment.get("protocol")}
    try:
        from crossmodal.eval.checkpoints import method_name

        card = None
        checkpoint = segment.get("checkpoint")
        if checkpoint and os.path.isdir(checkpoint) and not segment.get("random_init"):
            from crossmodal import run_folder

            card = run_folder.read_model_card(checkpoint)
        context["method"] = method_name(card, bool(segment.get("random_init")))
    except Exception:  # noqa: BLE001 - the title is a nicety; never fail the run over it
        pass
    try:
        from crossmodal.data.format import read_layout

        data_path = (tree.get("data") or {}).get("path")
        info = read_layout(data_path).labels[segment["labels"]]
        context["class_names"] = tuple(info.class_names)
    except Exception:  # noqa: BLE001
        pass
    return context


def segmentation_figure(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                        predictions: Sequence[np.ndarray], num_classes: int, ignore_index: Optional[int],
                        title: str = "", class_names: Optional[Sequence[str]] = None, method: Optional[str] = None,
                        modality: Optional[str] = None):
    """The preview figure and what it shows: ``(figure, info)`` with ``info`` holding ``title``, ``legend``
    (the class names in the legend), ``void`` (whether a ground truth shown has void pixels: they are drawn
    black, and the legend ends with a black "void (not scored)" entry), ``depth_ranges`` (per sample
    ``(low, high)`` of its colour bar) and ``depth_unit`` (``"m"`` or ``"normalised"``). See
    :func:`write_segmentation_preview`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    rows = len(images)
    single = bool(rows) and images[0].shape[0] != 3
    metres = single and modality in DEPTH_KINDS
    shown = present_classes(list(truths) + list(predictions), num_classes, ignore_index)
    names = [class_names[c] if class_names and c < len(class_names) else f"class {c}" for c in shown]
    void = any(void_mask(truth, num_classes, ignore_index).any() for truth in truths)
    legend_lines = -(-(len(shown) + void) // 4)
    figure, axes = plt.subplots(rows, 3, figsize=(6.6 if single else 6, 2 * rows + 0.5 + 0.2 * legend_lines),
                                squeeze=False)
    palette = label_palette(num_classes + 1)
    info: dict = {"void": void, "depth_ranges": [], "depth_unit": ("m" if metres else "normalised") if single else None}
    for row, (image, truth, predicted) in enumerate(zip(images, truths, predictions)):
        tiles = (input_tile(image), colorize(truth, num_classes, ignore_index),
                 colorize(predicted, num_classes, ignore_index))
        input_name = f"input ({modality})" if modality else "input"
        for column, (tile, name) in enumerate(zip(tiles, (input_name, "ground truth", "prediction"))):
            axis = axes[row, column]
            axis.imshow(tile, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=9)
        if single:
            low, high = _robust_range(image[0].astype(np.float32))
            if metres:
                low, high = float(to_metres(low)), float(to_metres(high))
            info["depth_ranges"].append((low, high))
            mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(low, high), cmap="turbo")
            bar = figure.colorbar(mappable, ax=axes[row, 0], fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=7)
            bar.ax.set_title("m" if metres else "norm.", fontsize=7, pad=3)  # upright, above the bar
    info["legend"] = names
    full = title
    if method and method not in title:
        full = f"{method}: {title}" if title else method
    info["title"] = full
    if full:
        figure.suptitle(full, fontsize=10)
    bottom = 0.0
    if shown or void:
        handles = [Patch(facecolor=palette[c + 1] / 255.0, edgecolor="black", linewidth=0.3, label=n)
                   for c, n in zip(shown, names)]
        handles += [Patch(facecolor="black", edgecolor="black", linewidth=0.3, label=VOID_LABEL)] * void
        legend = figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                               ncol=min(len(handles), 4), fontsize=8, frameon=False, handlelength=1.2,
                               columnspacing=1.0, handletextpad=0.4)
        figure.canvas.draw()  # the legend's height, to keep the grid just above it
        bottom = legend.get_window_extent().height / figure.bbox.height
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return figure, info


def write_segmentation_preview(path: str | os.PathLike, images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                               predictions: Sequence[np.ndarray], num_classes: int, ignore_index: Optional[int],
                               title: str = "", class_names: Optional[Sequence[str]] = None,
                               method: Optional[str] = None, modality: Optional[str] = None) -> str:
    """Write ``path`` (PNG, atomically): one row per sample with input, ground truth and prediction, a legend
    of the classes that occur in the shown samples, a colour bar per single-channel input (its 2-98 percentile
    range, in metres for a depth modality) and a title naming the method; void ground-truth pixels are black, with
    a legend entry saying so.

    Args:
        path: the PNG to write.
        images: normalised (C, H, W) inputs.
        truths: (H, W) ground-truth class ids.
        predictions: (H, W) predicted class ids.
        num_classes: the label set's class count.
        ignore_index: its void value, drawn black.
        title: a line above the grid.
        class_names: the label set's class names; method: the evaluated encoder's method name; modality: the
            input's modality. Each, when not given, comes from the run folder's ``config.yaml`` beside ``path``
            when there is one.

    Returns:
        ``path``.

    Examples:
        >>> write_segmentation_preview("preview.png", [x], [y], [p], 13, 255, "seg13, finetune")
    """
    from matplotlib import pyplot as plt

    if class_names is None or method is None or modality is None:
        context = _run_context(path)
        class_names = class_names if class_names is not None else context.get("class_names")
        method = method if method is not None else context.get("method")
        modality = modality if modality is not None else context.get("modality")
    figure, _ = segmentation_figure(images, truths, predictions, num_classes, ignore_index, title, class_names,
                                    method, modality)
    try:
        with atomic_output(path, suffix=".png") as temporary:
            figure.savefig(temporary, format="png", dpi=80)
    finally:
        plt.close(figure)
    return os.fspath(path)


def confusion_shares(confusion: Any) -> np.ndarray:
    """Each row of a confusion matrix (true classes in rows) divided by its count: the share of that class's pixels
    predicted as each class; NaN for a class absent from the ground truth.

    Examples:
        >>> confusion_shares([[3, 1], [0, 0]]).tolist()
        [[0.75, 0.25], [nan, nan]]
    """
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)


def confusion_png(confusion: Any, class_names: Optional[Sequence[str]] = None, title: str = "") -> bytes:
    """A confusion matrix (true classes in rows) as PNG bytes: each row divided by its pixel count, so a cell is
    the share of that class's pixels predicted as the column's class (the diagonal: the class's accuracy); a class
    absent from the ground truth is a blank row, its name marked "(absent)"."""
    from matplotlib.figure import Figure

    shares = confusion_shares(confusion)
    size = len(shares)
    names = list(class_names) if class_names is not None and len(class_names) == size else [str(c) for c in range(size)]
    names = [name if np.isfinite(row).all() else f"{name} (absent)" for name, row in zip(names, shares)]
    side = min(12.0, 2.5 + 0.35 * size)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axis = figure.add_subplot()
    shown = axis.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03, label="share of the true class's pixels")
    axis.set_xticks(range(size), names, rotation=90, fontsize=7)
    axis.set_yticks(range(size), names, fontsize=7)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    axis.title.set_fontsize(9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
