"""A PNG grid of a few samples: every stored modality side by side with its label maps in colour."""
from __future__ import annotations

import os

import cv2
import h5py
import numpy as np

from crossmodal.data.codecs import read_physical
from crossmodal.data.format import read_layout
from crossmodal.data.format import DEPTH_KINDS
from crossmodal.data.summary import sample_rows
from crossmodal.errors import DataError
from crossmodal.files import atomic_output

TILE = 160  # longest side of one tile in pixels
SMALL_TILE = 96  # small images are upscaled (nearest neighbour) by a whole factor to at most this
GRID_WIDTH = 800  # narrow cells are laid out several to a line up to about this width
GAP = 6
HEADER = 22


def label_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: distinct, stable colours per class id (uint8 RGB, num_colors x 3)."""
    palette = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


def depth_range(array: np.ndarray, percentiles: tuple[float, float] = (2.0, 98.0)) -> tuple[float, float]:
    """The robust display range of one depth frame: ``percentiles`` of its valid (finite, > 0) values."""
    valid = array[np.isfinite(array) & (array > 0)]
    if valid.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(valid, percentiles))
    if high - low < 1e-6:
        low, high = float(valid.min()), float(valid.max())
    return low, max(high, low + 1e-6)


def _to_tile(array: np.ndarray, kind: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """One stored array (HWC or HW) -> uint8 RGB for display, and for depth the frame's display range: each
    depth frame is scaled by its own 2-98 percentile range (holes and NaNs black)."""
    array = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if kind in DEPTH_KINDS:
        values = array.astype(np.float32)
        low, high = depth_range(values)
        scaled = np.clip((np.nan_to_num(values) - low) / (high - low) * 255, 0, 255).astype(np.uint8)
        tile = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)[..., ::-1].copy()
        tile[~(values > 0)] = 0  # holes and NaNs black
        return tile, (low, high)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return array, None
    values = array.astype(np.float32)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    grey = ((values - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    if grey.ndim == 3:  # 2 or 4+ channels: show the first as grey
        grey = grey[..., 0]
    return np.repeat(grey[..., None], 3, axis=2), None


def tile_side(height: int, width: int) -> int:
    """The longest side of a displayed tile: ``TILE`` for large images; small ones (CIFAR 32 x 32, STL 96 x 96)
    are upscaled by a whole factor (nearest neighbour) to at most ``SMALL_TILE``, never shrunk."""
    side = max(height, width)
    if side >= TILE:
        return TILE
    return side * max(1, SMALL_TILE // side)


def _fit(tile: np.ndarray, side: int) -> np.ndarray:
    height, width = tile.shape[:2]
    scale = side / max(height, width)
    interpolation = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    return cv2.resize(tile, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=interpolation)


def write_preview(path: str, out: str, num_samples: int = 6) -> str:
    """Write the grid to ``out`` (atomically) and return ``out``: one cell per sample (a caption with its row,
    class labels and each depth frame's display range, then its modalities and label maps side by side);
    cells are laid out several to a line when they are narrow (small images)."""
    if os.path.isdir(out):
        raise DataError(out, "is a folder; --preview takes the path of a .png file")
    layout = read_layout(path)
    if layout.num_samples == 0:
        raise DataError(layout.path, "holds no samples to preview")
    rows = sample_rows(layout.num_samples, num_samples)
    palette = label_palette()
    kind_order = {"rgb": 0, "depth": 1, "raw_depth": 2}
    columns = sorted(layout.modalities, key=lambda n: (kind_order.get(layout.modalities[n].kind, 3), n))
    columns += [n for n, info in layout.labels.items() if info.type == "segmentation"]
    class_sets = [n for n, info in layout.labels.items() if info.type == "class"]
    cells, widths = [], []
    try:
        with h5py.File(layout.path, "r") as handle:
            class_values = {name: handle["labels"][name][()] for name in class_sets}
            for row in rows:
                tiles, ranges = [], []
                for name in columns:
                    if name in layout.modalities:
                        info = layout.modalities[name]
                        tile, shown = _to_tile(read_physical(handle["modalities"][name], row), info.kind)
                        if shown is not None:
                            ranges.append(f"{name} {shown[0]:.2f}-{shown[1]:.2f}")
                    else:
                        labels = handle["labels"][name][row]
                        tile = palette[(labels.astype(np.int64) + 1) % len(palette)]  # class 0 is not black
                        tile[labels == layout.labels[name].ignore_index] = 0  # void black
                    tiles.append(_fit(tile, tile_side(*tile.shape[:2])))
                widths = [t.shape[1] for t in tiles]
                strip = np.concatenate(tiles, axis=1)
                caption = f"row {row}" + "".join(
                    f"  {n}: {_class_name(layout.labels[n].class_names, class_values[n][row])}" for n in class_sets)
                bars = [_text_bar(caption, strip.shape[1])]
                if ranges:
                    bars.append(_text_bar("  ".join(ranges), strip.shape[1]))
                cells.append(np.concatenate(bars + [strip], axis=0))
    except OSError as err:
        raise DataError(layout.path, f"cannot read the data (truncated or damaged file): {err}") from None
    header = np.concatenate([_text_bar(name, width) for name, width in zip(columns, widths)], axis=1)
    per_line = max(1, min(len(cells), GRID_WIDTH // (header.shape[1] + GAP)))
    lines = []
    for start in range(0, len(cells), per_line):
        line = [header_cell for cell in cells[start:start + per_line]
                for header_cell in (np.concatenate([header, cell], axis=0),)]
        line += [np.full_like(line[0], 255)] * (per_line - len(line))
        spaced = []
        for cell in line:
            spaced += [cell, np.full((cell.shape[0], GAP, 3), 255, np.uint8)]
        lines.append(np.concatenate(spaced[:-1], axis=1))
    grid = np.concatenate(lines, axis=0)
    with atomic_output(out, suffix=".png") as tmp:
        if not cv2.imwrite(tmp, grid[..., ::-1]):
            raise DataError(out, "cannot write the preview PNG there")
    return out


def _class_name(names: tuple[str, ...], value: int) -> str:
    return names[value] if value >= 0 else "unlabelled"


def _text_bar(text: str, width: int) -> np.ndarray:
    bar = np.full((HEADER, width, 3), 255, np.uint8)
    scale = 0.45  # shrink the text to fit a narrow tile (down to 0.3), then it is clipped
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 6:
        scale -= 0.05
    cv2.putText(bar, text, (3, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bar
