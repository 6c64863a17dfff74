"""Paired transforms keep modalities aligned, resample masks and holes nearest-neighbour, reject unknown keys."""
from __future__ import annotations

import numpy as np
import pytest

from crossmodal.data.codecs import read_physical
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.transforms import PairedTransform
from tolerance import gamma


def _edges(array: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour differs (a boolean edge map)."""
    array = array.astype(np.float64)
    if array.ndim == 3:
        array = array.sum(axis=2)
    edges = np.zeros(array.shape, bool)
    edges[:, :-1] |= array[:, 1:] != array[:, :-1]
    edges[:-1, :] |= array[1:, :] != array[:-1, :]
    return edges


def _frame(height=96, width=128):
    """A frame with one rectangle seen in rgb, depth and labels, and a hole region in raw depth."""
    rgb = np.full((height, width, 3), (40, 60, 200), np.uint8)
    depth = np.full((height, width, 1), 4.0, np.float32)
    seg = np.zeros((height, width), np.uint8)
    top, left, bottom, right = 30, 37, 70, 101
    rgb[top:bottom, left:right] = (220, 30, 30)
    depth[top:bottom, left:right] = 1.5
    seg[top:bottom, left:right] = 5
    raw = depth.copy()
    raw[top:bottom, left:left + 8] = 0.0  # a hole strip along the left side of the object
    return {"rgb": rgb, "depth": depth, "raw_depth": raw, "seg": seg}


@pytest.mark.parametrize("seed", range(12))
def test_random_crops_and_flips_keep_edges_aligned(seed):
    transform = PairedTransform(size=(48, 64), train=True, scale=(0.3, 1.0))
    out = transform.geometric(_frame(), nearest={"raw_depth", "seg"}, seed=seed)
    seg_edges = _edges(out["seg"])
    raw_values = set(np.unique(out["raw_depth"]).tolist())
    assert raw_values <= {0.0, 1.5, 4.0}  # nearest-neighbour: no blended hole borders
    assert set(np.unique(out["seg"]).tolist()) <= {0, 5}
    if seg_edges.any():
        # rgb and depth are resampled bilinearly: their edges may widen by a pixel, never move away.
        rgb_mask = out["rgb"][..., 0] > 125
        depth_mask = out["depth"][..., 0] < 2.75
        seg_mask = out["seg"] == 5
        assert (rgb_mask != seg_mask).mean() < 0.03
        assert (depth_mask != seg_mask).mean() < 0.03
        np.testing.assert_array_equal(out["raw_depth"][..., 0] == 1.5, seg_mask & (out["raw_depth"][..., 0] != 0))


def test_flip_moves_every_modality_together():
    transform = PairedTransform(size=None, train=True, color_jitter=0)
    frame = _frame()
    flipped_seeds = []
    for seed in range(20):
        out = transform.geometric(frame, nearest={"raw_depth", "seg"}, seed=seed)
        flipped = not np.array_equal(out["seg"], frame["seg"])
        flipped_seeds.append(flipped)
        for name in frame:
            expected = frame[name][:, ::-1] if flipped else frame[name]
            np.testing.assert_array_equal(out[name], expected)
    assert 0 < sum(flipped_seeds) < 20


def test_undeclared_key_is_an_error_not_a_silent_pass_through():
    transform = PairedTransform(size=(32, 32), train=True)
    compose_keys = {"rgb": "image", "seg": "mask"}
    from crossmodal.data.transforms import geometric_compose
    compose = geometric_compose(transform, tuple(sorted(compose_keys.items())), "rgb")
    frame = _frame()
    with pytest.raises(ValueError, match="thermal"):
        compose(image=frame["rgb"], seg=frame["seg"], thermal=frame["depth"])


def test_eval_resize_is_deterministic_and_masks_stay_nearest():
    transform = PairedTransform(size=(48, 64), train=False)
    one = transform.geometric(_frame(), nearest={"seg", "raw_depth"}, seed=0)
    two = transform.geometric(_frame(), nearest={"seg", "raw_depth"}, seed=99)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert set(np.unique(one["seg"]).tolist()) <= {0, 5}


def test_color_jitter_touches_colour_only_and_is_shared_by_l_and_ab(synthetic_file):
    transform = PairedTransform(size=None, train=True, hflip=False, color_jitter=0.8)
    plain = PairedDataset(synthetic_file, None, modalities=["rgb", "depth", "lab_l", "lab_ab"])
    jittered = PairedDataset(synthetic_file, None, modalities=["rgb", "depth", "lab_l", "lab_ab"],
                             transform=transform)
    changed = 0
    for index in range(8):
        before, after = plain[index], jittered[index]
        np.testing.assert_array_equal(before["depth"].numpy(), after["depth"].numpy())
        changed += not np.allclose(before["rgb"].numpy(), after["rgb"].numpy())
        # L and ab come from the same jittered picture: rebuild it from them and compare with rgb.
        from crossmodal.data.modalities import IMAGENET_MEAN, IMAGENET_STD
        import cv2
        rgb = (after["rgb"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN).astype(np.float32)
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        # The rebuilt picture differs from the jittered one by the normalisation's and this rebuild's roundings
        # (float32, about six of values of at most one); CIE L / 50 moves by at most 903.3 x 2.275 / 50 = 41 per
        # unit of an rgb value (the steepest slope of L in Y, times that of Y in an sRGB value), and OpenCV's
        # own arithmetic adds some twenty roundings of L / 50 <= 2 (tests/tolerance.py).
        np.testing.assert_allclose(after["lab_l"][0].numpy(), lab[..., 0] / 50 - 1, rtol=0,
                                   atol=41 * gamma(6) + 2 * gamma(20))
    assert changed >= 4  # p = 0.8 per sample


@pytest.mark.parametrize("row", [0, 7, 21])
def test_synthetic_frame_stays_aligned_under_random_crops(synthetic_file, row):
    """Carry each pixel's source coordinates through the transform; every modality must agree with them."""
    import h5py
    with h5py.File(synthetic_file, "r") as handle:
        frame = {"rgb": handle["modalities/rgb"][row], "depth": read_physical(handle["modalities/depth"], row),
                 "seg": handle["labels/seg"][row]}
    height, width = frame["seg"].shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    frame["coords"] = np.stack([rows, cols], axis=-1)
    transform = PairedTransform(size=(48, 48), train=True, scale=(0.3, 1.0))
    for seed in range(6):
        out = transform.geometric(frame, nearest={"seg", "coords"}, seed=seed)
        source_rows = out["coords"][..., 0].astype(int)
        source_cols = out["coords"][..., 1].astype(int)
        np.testing.assert_array_equal(out["seg"], frame["seg"][source_rows, source_cols])
        depth_error = np.abs(out["depth"][..., 0] - frame["depth"][source_rows, source_cols, 0])
        rgb_error = np.abs(out["rgb"].astype(int) - frame["rgb"][source_rows, source_cols].astype(int)).max(-1)
        # bilinear resampling differs from the nearest source pixel only next to edges
        assert np.median(depth_error) < 0.05 and (depth_error < 0.3).mean() > 0.9
        assert np.median(rgb_error) < 25
        # and the label edges are where depth or colour edges are
        seg_edges = _edges(out["seg"])
        assert (depth_error[seg_edges] < 1.0).mean() > 0.5
