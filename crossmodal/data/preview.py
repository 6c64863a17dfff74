"""A PNG grid of a few samples: every stored modality side by side with its label maps in colour."""
from __future__ import annotations

import math
import os
import re

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
LINE = 18  # height of one line of text
RAMP = 10  # height of a colour bar's colour ramp
MARGIN = 3
MIN_SCALE = 0.35  # the smallest font scale used before text wraps
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK = np.zeros(3, np.uint8)  # void label pixels and depth holes (0, negative or NaN) are drawn in it
VOID_NAME = "void (unlabelled)"
HOLE_NAME = "hole (no valid depth)"


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
    depth frame is scaled by its own 2-98 percentile range (holes and NaNs black); a frame without one valid
    value is black, with a NaN range."""
    array = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if kind in DEPTH_KINDS:
        values = array.astype(np.float32)
        valid = np.isfinite(values) & (values > 0)
        if not valid.any():
            return np.zeros((*values.shape[:2], 3), np.uint8), (math.nan, math.nan)
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
    """Write the grid to ``out`` (atomically) and return ``out``: one cell per sample (a caption with its row
    and class labels, then its modalities and label maps side by side, each depth tile over a colour bar of
    its own display range in its units); cells are laid out several to a line when they are narrow (small
    images), and legends close the grid: the label classes shown, and black for the void pixels and depth
    holes shown (see :func:`closing_legends`)."""
    if os.path.isdir(out):
        raise DataError(out, "is a folder; --preview takes the path of a .png file")
    layout = read_layout(path)
    if layout.num_samples == 0:
        raise DataError(layout.path, "holds no samples to preview")
    rows = sample_rows(layout.num_samples, num_samples)
    palette = label_palette()
    kind_order = {"rgb": 0, "depth": 1, "raw_depth": 2}
    columns = sorted(layout.modalities, key=lambda n: (kind_order.get(layout.modalities[n].kind, 3), n))
    segmentations = [n for n, info in layout.labels.items() if info.type == "segmentation"]
    columns += segmentations
    class_sets = [n for n, info in layout.labels.items() if info.type == "class"]
    shown_classes: dict[str, set[int]] = {name: set() for name in segmentations}
    void_shown: set[str] = set()
    holes_shown: set[str] = set()
    cells, widths = [], []
    try:
        with h5py.File(layout.path, "r") as handle:
            class_values = {name: handle["labels"][name][()] for name in class_sets}
            for row in rows:
                tiles, bars = [], []
                for name in columns:
                    shown = None
                    if name in layout.modalities:
                        info = layout.modalities[name]
                        array = read_physical(handle["modalities"][name], row)
                        if info.kind in DEPTH_KINDS and not (array > 0).all():  # NaN > 0 is False too
                            holes_shown.add(name)
                        tile, shown = _to_tile(array, info.kind)
                        unit = info.units if info.units and len(info.units) <= 3 else ""
                    else:
                        labels = handle["labels"][name][row]
                        void = layout.labels[name].ignore_index
                        tile = palette[(labels.astype(np.int64) + 1) % len(palette)]  # class 0 is not black
                        tile[labels == void] = 0  # void black
                        if void is not None and (labels == void).any():
                            void_shown.add(name)
                        shown_classes[name].update(int(v) for v in np.unique(labels) if v != void)
                    tile = _fit(tile, tile_side(*tile.shape[:2]))
                    tiles.append(tile)
                    bars.append(None if shown is None else colour_bar(tile.shape[1], *shown, unit))
                widths = [t.shape[1] for t in tiles]
                strip = np.concatenate(tiles, axis=1)
                if any(bar is not None for bar in bars):
                    height = max(bar.shape[0] for bar in bars if bar is not None)
                    strip = np.concatenate([strip, np.concatenate(
                        [bar if bar is not None else np.full((height, w, 3), 255, np.uint8)
                         for bar, w in zip(bars, widths)], axis=1)], axis=0)
                caption = f"row {row}" + "".join(
                    f", {n}: {_class_name(layout.labels[n].class_names, class_values[n][row])}" for n in class_sets)
                cells.append(np.concatenate([text_block(caption, strip.shape[1]), strip], axis=0))
    except OSError as err:
        raise DataError(layout.path, f"cannot read the data (truncated or damaged file): {err}") from None
    header = _header(columns, widths)
    per_line = max(1, min(len(cells), GRID_WIDTH // (header.shape[1] + GAP)))
    lines = []
    for start in range(0, len(cells), per_line):
        line = [np.concatenate([header, cell], axis=0) for cell in cells[start:start + per_line]]
        height = max(cell.shape[0] for cell in line)
        line = [_pad(cell, height, cell.shape[1]) for cell in line]
        line += [np.full_like(line[0], 255)] * (per_line - len(line))
        spaced = []
        for cell in line:
            spaced += [cell, np.full((cell.shape[0], GAP, 3), 255, np.uint8)]
        lines.append(np.concatenate(spaced[:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    class_names = {name: layout.labels[name].class_names for name in segmentations}
    for title, entries in closing_legends(class_names, shown_classes, void_shown, holes_shown, palette):
        lines.append(legend(title, entries, max(width, 320)) if entries
                     else text_block(f"{title} no labelled pixel in these samples", max(width, 320)))
    width = max(line.shape[1] for line in lines)
    grid = np.concatenate([_pad(line, line.shape[0], width) for line in lines], axis=0)
    encoded, png = cv2.imencode(".png", grid[..., ::-1])
    if not encoded:
        raise DataError(out, "cannot encode the preview as PNG")
    with atomic_output(out) as tmp, open(tmp, "wb") as handle:  # cv2.imwrite would say only False, not why
        handle.write(png.tobytes())
    return out


def closing_legends(class_names: dict[str, tuple[str, ...]], shown_classes: dict[str, set[int]],
                    void_shown: set[str], holes_shown: set[str],
                    palette: np.ndarray) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """The legends under the grid as ``(title, [(colour, name), ...])``: per segmentation label set the classes
    shown and, when some of its pixels shown are void, black for them; then, when a depth tile shown has holes,
    black for those (named by the modalities that have them). An empty list: a label set with no labelled
    pixel in the samples shown.

    Examples:
        >>> [(title, [name for _, name in entries]) for title, entries in closing_legends(
        ...     {"seg": ("floor", "wall")}, {"seg": {1}}, {"seg"}, {"raw_depth"}, label_palette())]
        [('seg:', ['wall', 'void (unlabelled)']), ('raw_depth:', ['hole (no valid depth)'])]
    """
    legends = []
    for name, names in class_names.items():
        entries = [(palette[(c + 1) % len(palette)], names[c] if c < len(names) else f"class {c}")
                   for c in sorted(shown_classes[name])]
        legends.append((f"{name}:", entries + [(BLACK, VOID_NAME)] * bool(entries and name in void_shown)))
    if holes_shown:
        legends.append((f"{', '.join(sorted(holes_shown))}:", [(BLACK, HOLE_NAME)]))
    return legends


def colour_bar(width: int, low: float, high: float, unit: str = "") -> np.ndarray:
    """A horizontal turbo colour bar ``width`` pixels wide (uint8 RGB) labelled with the depth tile's display
    range: ``low`` at its left end, ``high`` and ``unit`` at its right end (on a second line when both do not
    fit on one). A NaN range (a frame without one valid depth value) draws no ramp and says so."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return np.concatenate([np.full((RAMP, width, 3), 255, np.uint8), text_block("no valid depth", width)])
    ramp = np.linspace(0, 255, max(width - 2 * MARGIN, 1)).astype(np.uint8)[None, :]
    colours = cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)[..., ::-1]
    left, right = f"{low:.2f}", f"{high:.2f}" + (f" {unit}" if unit else "")
    scale = _fitting_scale(f"{left}  {right}", width)
    lines = 1 if _text_width(f"{left}  {right}", scale) <= width - 2 * MARGIN else 2
    bar = np.full((RAMP + LINE * lines, width, 3), 255, np.uint8)
    bar[2:RAMP, MARGIN:MARGIN + colours.shape[1]] = colours
    _put(bar, left, MARGIN, RAMP + LINE - 5, scale)
    right_width = _text_width(right, scale)
    _put(bar, right, max(MARGIN, width - MARGIN - right_width), RAMP + LINE * lines - 5, scale)
    return bar


def text_block(text: str, width: int) -> np.ndarray:
    """``text`` on white, ``width`` pixels wide: shrunk to fit down to a legible size, then wrapped at commas
    and spaces onto as many lines as it needs (never clipped, unless one word is wider than the block)."""
    scale = _fitting_scale(text, width)
    lines = [text] if _text_width(text, scale) <= width - 2 * MARGIN else _wrap(text, width, scale)
    block = np.full((LINE * len(lines) + 4, width, 3), 255, np.uint8)
    for number, line in enumerate(lines):
        _put(block, line, MARGIN, LINE * (number + 1) - 3, scale)
    return block


def legend(title: str, entries: list[tuple[np.ndarray, str]], width: int) -> np.ndarray:
    """A legend ``width`` pixels wide: ``title`` then a colour swatch and name per entry, wrapped onto lines."""
    scale = 0.45
    items = [(None, title)] + entries
    placed, x, y = [], MARGIN, 0
    for colour, name in items:
        item_width = (LINE if colour is not None else 0) + _text_width(name, scale) + 12
        if x + item_width > width and x > MARGIN:
            x, y = MARGIN + _text_width(title, scale) + 12, y + LINE + 2
        placed.append((colour, name, x, y))
        x += item_width
    block = np.full((y + LINE + 8, width, 3), 255, np.uint8)
    for colour, name, x, y in placed:
        if colour is not None:
            block[y + 4:y + LINE - 2, x:x + LINE - 6] = colour
            cv2.rectangle(block, (x, y + 4), (x + LINE - 7, y + LINE - 3), (0, 0, 0), 1)
            x += LINE
        _put(block, name, x, y + LINE - 4, scale)
    return block


def _class_name(names: tuple[str, ...], value: int) -> str:
    return names[value] if value >= 0 else "unlabelled"


def _header(columns: list[str], widths: list[int]) -> np.ndarray:
    blocks = [text_block(name, width) for name, width in zip(columns, widths)]
    height = max(block.shape[0] for block in blocks)
    return np.concatenate([_pad(block, height, block.shape[1]) for block in blocks], axis=1)


def _pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` on a white canvas of ``height`` x ``width`` (top left)."""
    if image.shape[:2] == (height, width):
        return image
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
    return canvas


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _fitting_scale(text: str, width: int) -> float:
    """The largest font scale from 0.45 down to ``MIN_SCALE`` at which ``text`` fits in ``width``."""
    scale = 0.45
    while scale > MIN_SCALE + 1e-9 and _text_width(text, scale) > width - 2 * MARGIN:
        scale -= 0.05
    return scale


def _wrap(text: str, width: int, scale: float) -> list[str]:
    lines = [""]
    for word in re.split(r"(?<=[ ,])", text):  # break after a space or a comma
        if lines[-1].strip() and _text_width((lines[-1] + word).rstrip(), scale) > width - 2 * MARGIN:
            lines.append("")
        lines[-1] += word
    return [line.strip() for line in lines]


def _put(image: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    cv2.putText(image, text, (x, y), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
