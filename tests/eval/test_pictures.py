"""The pictures the tool writes: segmentation previews, the data preview grid, the report plots."""
from __future__ import annotations

import numpy as np

from crossmodal.eval.preview_segmentation import (confusion_png, confusion_shares, segmentation_figure,
                                                 write_segmentation_preview)
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
        assert info["legend"] == ["floor", "wall", "ceiling"] and info["void"]  # box absent
        texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
        assert texts == ["floor", "wall", "ceiling", "void (not scored)"]  # before: black, in no legend
        void_patch = figure.legends[0].get_patches()[-1]
        assert tuple(void_patch.get_facecolor()[:3]) == (0.0, 0.0, 0.0)
        assert info["title"] == "crd: seg, frozen"
        assert info["depth_unit"] == "m"
        (near_low, near_high), (far_low, far_high) = info["depth_ranges"]
        assert 0.4 < near_low < near_high < 1.6 and 5.9 < far_low < far_high < 9.6  # per frame, in metres
    finally:
        plt.close(figure)


def test_confusion_matrix_picture_shows_each_true_class_as_shares_of_its_pixels():
    confusion = np.array([[6, 2, 0], [0, 0, 0], [1, 1, 2]])
    shares = confusion_shares(confusion)
    np.testing.assert_array_equal(shares[[0, 2]], [[0.75, 0.25, 0.0], [0.25, 0.25, 0.5]])  # exact in binary
    assert np.isnan(shares[1]).all()  # absent from the ground truth: a blank row, not a row of zeros
    import cv2

    picture = cv2.imdecode(np.frombuffer(confusion_png(confusion, ["a", "b", "c"], "title"), np.uint8),
                           cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 100


def test_segmentation_preview_without_void_pixels_has_no_void_entry():
    import matplotlib.pyplot as plt

    images, truths, predictions = _samples()
    truths = [np.where(truth == 255, 0, truth) for truth in truths]
    figure, info = segmentation_figure(images, truths, predictions, num_classes=4, ignore_index=255)
    plt.close(figure)
    assert not info["void"]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["class 0", "class 1", "class 2"]


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
    assert grid.shape[0] < 6 * 128  # not one tall column: 6 x (a 96 px tile, its caption and colour bars)


def test_inspect_grid_layout_is_what_preview_samples_help_says(synthetic_file, tmp_path):
    """Before: the help said "rows of the grid" while small images were laid out several samples to a line."""
    import cv2

    from conftest import cli
    from crossmodal.data.preview import write_preview
    from crossmodal.data.synthetic import generate

    help_text = " ".join(cli("inspect", "--help").stdout.split())
    assert "samples in the grid (default 6), evenly spaced over the file: one to a line for large images, several " \
           "to a line for small ones" in help_text
    large = tmp_path / "large.h5"
    generate(str(large), num=4, size=160, seed=0)
    grid = cv2.imread(write_preview(str(large), str(tmp_path / "large.png"), 3))
    assert 4 * 160 <= grid.shape[1] < 2 * 4 * 160  # rgb, depth, raw_depth, seg: one sample a line
    small = cv2.imread(write_preview(str(synthetic_file), str(tmp_path / "small.png"), 3))
    assert small.shape[1] >= 2 * 4 * 96  # 32 x 32 scenes: two samples or more a line


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


def _shown_classes(path, samples):
    """The non-void class ids of label set ``seg`` in the rows a preview of ``samples`` shows, and its names."""
    import h5py

    from crossmodal.data.summary import sample_rows

    with h5py.File(path, "r") as handle:
        seg = handle["labels"]["seg"]
        rows = sample_rows(seg.shape[0], samples)
        void = int(seg.attrs.get("ignore_index", 255))
        present = sorted({int(v) for row in rows for v in np.unique(seg[row]) if v != void})
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in seg.attrs["class_names"]]
    return present, names


def _bottom_legends(path, out, void):
    """Assert that the preview grid of ``path`` (4 samples) ends with the seg legend of the classes shown (and
    black for void when ``void``), then black for raw_depth's holes, pixel for pixel; return the seg legend."""
    import cv2

    from crossmodal.data.preview import BLACK, HOLE_NAME, VOID_NAME, label_palette, legend, write_preview

    grid = cv2.imread(write_preview(str(path), str(out), 4))[..., ::-1]
    present, names = _shown_classes(path, 4)
    palette = label_palette()
    entries = [(palette[c + 1], names[c]) for c in present] + [(BLACK, VOID_NAME)] * void
    expected = legend("seg:", entries, grid.shape[1])
    holes = legend("raw_depth:", [(BLACK, HOLE_NAME)], grid.shape[1])
    assert (grid[-holes.shape[0]:] == holes).all()  # raw_depth has holes in these scenes, drawn black
    grid = grid[:-holes.shape[0]]
    assert (grid[-expected.shape[0]:] == expected).all()
    return grid[-expected.shape[0]:], present, palette


def test_inspect_grid_ends_with_a_legend_of_the_classes_shown(synthetic_file, tmp_path):
    bottom, present, palette = _bottom_legends(synthetic_file, tmp_path / "grid.png", void=False)
    for c in present:
        assert (bottom.reshape(-1, 3) == palette[c + 1]).all(axis=1).sum() > 20  # a filled swatch per class


def test_inspect_grid_says_what_black_is(synthetic_file, tmp_path):
    """Before: void label pixels and depth holes were drawn black, and no legend said so."""
    import shutil

    import h5py

    from crossmodal.data.preview import closing_legends, label_palette

    legends = closing_legends({"seg": ("floor", "wall")}, {"seg": {0, 1}}, {"seg"}, {"raw_depth"}, label_palette())
    assert [(title, [name for _, name in entries]) for title, entries in legends] == [
        ("seg:", ["floor", "wall", "void (unlabelled)"]), ("raw_depth:", ["hole (no valid depth)"])]
    data = tmp_path / "void.h5"
    shutil.copy(synthetic_file, data)
    with h5py.File(data, "a") as handle:
        seg = handle["labels"]["seg"]
        frame = seg[0]
        frame[:4] = seg.attrs["ignore_index"]  # the first sample shown: its top rows void
        seg[0] = frame
    _bottom_legends(data, tmp_path / "grid.png", void=True)


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
