"""The pictures the tool writes: segmentation previews, the data preview grid, the report plots."""
from __future__ import annotations

import numpy as np
import pytest

from crossmodal.eval.preview_segmentation import segmentation_figure, write_segmentation_preview
from crossmodal.eval.probe_run import render_table


def _samples():
    near = np.linspace(-0.9, -0.7, 64, dtype=np.float32).reshape(1, 8, 8)  # about 0.5-1.5 m
    far = np.linspace(0.2, 0.9, 64, dtype=np.float32).reshape(1, 8, 8)  # about 6-9.5 m
    truth = np.zeros((8, 8), np.int64)
    truth[:4] = 2
    truth[0, 0] = 255
    predicted = np.full((8, 8), 1, np.int64)
    return [near, far], [truth, truth], [predicted, predicted]


def test_segmentation_preview_has_a_legend_of_present_classes_a_depth_bar_and_the_method():
    import matplotlib.pyplot as plt

    figure, info = segmentation_figure(*_samples(), num_classes=4, ignore_index=255, title="seg, frozen",
                                       class_names=("floor", "wall", "ceiling", "box"), method="crd",
                                       modality="depth")
    try:
        assert info["legend"] == ["floor", "wall", "ceiling"]  # box absent, void not listed
        texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
        assert texts == ["floor", "wall", "ceiling"]
        assert info["title"] == "crd: seg, frozen"
        assert info["depth_unit"] == "m"
        (near_low, near_high), (far_low, far_high) = info["depth_ranges"]
        assert 0.4 < near_low < near_high < 1.6 and 5.9 < far_low < far_high < 9.6  # per frame, in metres
    finally:
        plt.close(figure)


def test_segmentation_preview_single_channel_without_depth_modality_says_normalised(tmp_path):
    import matplotlib.pyplot as plt

    figure, info = segmentation_figure(*_samples(), num_classes=4, ignore_index=255, modality="hha1")
    plt.close(figure)
    assert info["depth_unit"] == "normalised" and info["legend"] == ["class 0", "class 1", "class 2"]
    out = write_segmentation_preview(tmp_path / "p.png", *_samples(), num_classes=4, ignore_index=255)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_inspect_depth_is_scaled_per_frame():
    from crossmodal.data.preview import _to_tile

    near = np.linspace(0.5, 1.0, 100, dtype=np.float32).reshape(10, 10)
    far = np.linspace(6.0, 9.0, 100, dtype=np.float32).reshape(10, 10)
    for frame in (near, far):
        tile, (low, high) = _to_tile(frame, "depth")
        assert frame.min() <= low < high <= frame.max()
        assert len({tuple(v) for v in tile.reshape(-1, 3)}) > 50  # the full colour range, not a sliver


def test_inspect_grid_of_small_images_has_several_columns(synthetic_file, tmp_path):
    import cv2

    from crossmodal.data.preview import tile_side, write_preview

    assert tile_side(32, 32) == 96 and tile_side(96, 96) == 96 and tile_side(480, 640) == 160
    out = write_preview(str(synthetic_file), str(tmp_path / "grid.png"), 6)
    grid = cv2.imread(out)
    cell_width = 4 * 96  # rgb, depth, raw_depth, seg tiles of one 32 x 32 sample
    assert grid.shape[1] >= 2 * cell_width  # more than one sample per line
    assert grid.shape[0] < 6 * 96  # not one tall column


def test_inspect_colour_bar_spans_turbo_and_is_labelled():
    import cv2

    from crossmodal.data.preview import LINE, MARGIN, RAMP, colour_bar

    bar = colour_bar(96, 1.06, 6.75, "m")
    assert bar.shape == (bar.shape[0], 96, 3) and bar.shape[0] > RAMP
    turbo = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_TURBO)[0, :, ::-1]
    ramp = bar[RAMP // 2]
    assert (ramp[MARGIN] == turbo[0]).all() and (ramp[96 - MARGIN - 1] == turbo[1]).all()
    inked = (bar[RAMP:].min(axis=2) < 100).any(axis=0)  # columns with text
    assert inked[:30].any() and inked[-30:].any()
    assert not inked[30:52].any()  # a gap between "1.06" and "6.75 m": the labels do not run together
    narrow = colour_bar(50, 1.34, 3.67, "m")  # too narrow for both on one line: the high end goes below
    assert narrow.shape[0] == bar.shape[0] + LINE
    assert (narrow[RAMP:RAMP + LINE].min(axis=2) < 100).any() and (narrow[RAMP + LINE:].min(axis=2) < 100).any()
    empty = colour_bar(96, float("nan"), float("nan"), "m")  # a frame without one valid depth value
    assert (empty[:RAMP] == 255).all() and (empty[RAMP:].min(axis=2) < 100).any()  # no ramp, a text


def test_inspect_grid_has_a_colour_bar_under_every_depth_tile(synthetic_file, tmp_path):
    import cv2

    from crossmodal.data.preview import MARGIN, RAMP, write_preview

    out = write_preview(str(synthetic_file), str(tmp_path / "grid.png"), 4)
    grid = cv2.imread(out)[..., ::-1]
    tile = 96  # 32 x 32 scenes shown at 96 px
    ramp = cv2.applyColorMap(np.linspace(0, 255, tile - 2 * MARGIN).astype(np.uint8)[None, :],
                             cv2.COLORMAP_TURBO)[0, :, ::-1]
    found = 0
    for row in grid:
        for start in range(grid.shape[1] - len(ramp) + 1):
            if (row[start] == ramp[0]).all() and (row[start:start + len(ramp)] == ramp).all():
                found += 1
    assert found == 4 * 2 * (RAMP - 2)  # depth and raw_depth of 4 samples, each ramp RAMP - 2 rows tall


def test_inspect_captions_wrap_instead_of_being_cut():
    from crossmodal.data.preview import LINE, MARGIN, _fitting_scale, _text_width, _wrap, text_block

    caption = "row 239, label: automobile, scene: living_room"
    block = text_block(caption, 96)
    assert block.shape[0] >= 3 * LINE  # three lines or more at this width
    scale = _fitting_scale(caption, 96)
    lines = _wrap(caption, 96, scale)
    assert " ".join(lines).replace(", ", ",").replace(",", ", ") == caption  # no word lost
    assert all(_text_width(line, scale) <= 96 - 2 * MARGIN for line in lines)
    assert text_block("rgb", 96).shape[0] == LINE + 4  # a short text stays one line


def test_inspect_grid_ends_with_a_legend_of_the_classes_shown(synthetic_file, tmp_path):
    import cv2
    import h5py

    from crossmodal.data.preview import label_palette, legend, write_preview
    from crossmodal.data.summary import sample_rows

    out = write_preview(str(synthetic_file), str(tmp_path / "grid.png"), 4)
    grid = cv2.imread(out)[..., ::-1]
    with h5py.File(synthetic_file, "r") as handle:
        seg = handle["labels"]["seg"]
        rows = sample_rows(seg.shape[0], 4)
        void = int(seg.attrs.get("ignore_index", 255))
        present = sorted({int(v) for row in rows for v in np.unique(seg[row]) if v != void})
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in seg.attrs["class_names"]]
    palette = label_palette()
    expected = legend("seg:", [(palette[c + 1], names[c]) for c in present], grid.shape[1])
    assert (grid[-expected.shape[0]:] == expected).all()
    bottom = grid[-expected.shape[0]:].reshape(-1, 3)
    for c in present:
        assert (bottom == palette[c + 1]).all(axis=1).sum() > 20  # a filled swatch per class shown


def test_report_plots_one_seed_have_no_zero_width_caps_and_offset_points(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crossmodal.eval import report_plots

    figure, axis = plt.subplots()
    report_plots._points(axis, [0, 1], [50.0, 60.0], [0.0, 0.0], "o", "crd")
    assert not axis.containers  # no ErrorbarContainer
    report_plots._points(axis, [0, 1], [50.0, 60.0], [1.0, 0.0], "s", "kd")
    assert len(axis.containers) == 1
    plt.close(figure)
    assert report_plots._offset(0, 1) == 0.0
    assert report_plots._offset(0, 3) < report_plots._offset(1, 3) < report_plots._offset(2, 3)


def test_integer_epoch_ticks():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crossmodal.eval.report_plots import integer_ticks

    figure, axis = plt.subplots()
    axis.plot([1, 2, 3], [0.5, 0.4, 0.3])
    integer_ticks(axis)
    figure.canvas.draw()
    assert all(float(t).is_integer() for t in axis.get_xticks())
    plt.close(figure)


def test_scratch_probe_header_names_the_random_initialisation():
    result = {"checkpoint": "runs/crd", "random_init": True, "method": "scratch", "modality": "depth",
              "data": "d.h5", "labels": "label", "num_classes": 2, "num_train": 4, "num_test": 2, "chance": 0.5,
              "stages": []}
    assert render_table(result).startswith("probe of a random initialisation of runs/crd's architecture "
                                           "(scratch, depth)")
