"""The torch reader: sample dicts, lazy per-worker opening, pickling, derived modalities, seeded augmentation."""
from __future__ import annotations

import pickle

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crossmodal.data.codecs import read_physical
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.modalities import IMAGENET_MEAN, IMAGENET_STD, MAX_DEPTH_M, Modality, register_modality
from crossmodal.data.transforms import PairedTransform
from crossmodal.errors import DataError
from tolerance import gamma


def test_sample_dict_matches_the_stored_rows(synthetic_file):
    data = PairedDataset(synthetic_file, "test", modalities=["rgb", "depth", "raw_depth"], labels=["seg", "label"])
    with h5py.File(synthetic_file, "r") as handle:
        rows = handle["splits/test"][()]
        row = int(rows[3])
        rgb, depth = handle["modalities/rgb"][row], read_physical(handle["modalities/depth"], row)
        seg, label = handle["labels/seg"][row], int(handle["labels/label"][row])
    sample = data[3]
    assert len(data) == len(rows)
    assert sample["index"] == 3 and sample["row"] == row
    assert sample["rgb"].shape == (3, 32, 32) and sample["rgb"].dtype == torch.float32
    expected_rgb = (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    # float32 (tests/tolerance.py): the constants' rounding and at most four operations (scale to [0, 1],
    # subtract the mean, divide by the std), each relative to values of at most (1 + mean) / std
    scale = float((1 + np.max(IMAGENET_MEAN)) / np.min(IMAGENET_STD))
    np.testing.assert_allclose(sample["rgb"].numpy().transpose(1, 2, 0), expected_rgb, rtol=0, atol=gamma(6) * scale)
    # metres times 2 / 10, minus 1: three roundings of values of at most 2 + 1
    np.testing.assert_allclose(sample["depth"][0].numpy(), depth[..., 0] / MAX_DEPTH_M * 2 - 1, rtol=0,
                               atol=gamma(3) * 3)
    assert sample["seg"].dtype == torch.int64
    np.testing.assert_array_equal(sample["seg"].numpy(), seg)
    assert sample["label"] == label


def test_lab_views_are_cmc_range_normalised(synthetic_file):
    data = PairedDataset(synthetic_file, None, modalities=["lab_l", "lab_ab", "rgb"])
    sample = data[5]
    assert sample["lab_l"].shape == (1, 32, 32) and sample["lab_ab"].shape == (2, 32, 32)
    with h5py.File(synthetic_file, "r") as handle:
        rgb = handle["modalities/rgb"][5]
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)  # the same OpenCV call as the reader's
    # then float32 range maps: the constants' rounding and at most four operations on values of at most 3
    np.testing.assert_allclose(sample["lab_l"][0].numpy(), lab[..., 0] / 50 - 1, rtol=0, atol=gamma(6) * 3)
    a_range, b_range = 98.233 + 86.183, 94.478 + 107.857
    np.testing.assert_allclose(sample["lab_ab"][0].numpy(), (lab[..., 1] + 86.183) / a_range * 2 - 1, rtol=0,
                               atol=gamma(6) * 3)
    np.testing.assert_allclose(sample["lab_ab"][1].numpy(), (lab[..., 2] + 107.857) / b_range * 2 - 1, rtol=0,
                               atol=gamma(6) * 3)


def test_lab_ranges_span_minus_one_to_one_over_the_gamut():
    from crossmodal.data.modalities import MODALITIES
    levels = np.arange(0, 256, 15, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(1, -1, 3)
    l_view = MODALITIES["lab_l"].normalize(MODALITIES["lab_l"].derive(cube).transpose(2, 0, 1).copy())
    ab_view = MODALITIES["lab_ab"].normalize(MODALITIES["lab_ab"].derive(cube).transpose(2, 0, 1).copy())
    assert l_view.min() == pytest.approx(-1, abs=1e-3) and l_view.max() == pytest.approx(1, abs=1e-3)
    assert ab_view.min() >= -1.001 and ab_view.max() <= 1.001
    assert ab_view.min() < -0.95 and ab_view.max() > 0.95


def test_new_modality_is_a_data_definition(synthetic_file):
    inverse = register_modality(Modality(
        "inverse_depth", 1, "depth", normalize=lambda x: x, derive=lambda d: 1.0 / np.maximum(d, 0.1)))
    try:
        # depth is normalised in place first: the derived modality must still see metres
        sample = PairedDataset(synthetic_file, None, modalities=["depth", inverse.name])[0]
        with h5py.File(synthetic_file, "r") as handle:
            depth = read_physical(handle["modalities/depth"], 0)[..., 0]
        np.testing.assert_array_equal(sample["inverse_depth"][0].numpy(), 1 / depth)  # one float32 division
    finally:
        from crossmodal.data.modalities import MODALITIES
        MODALITIES.pop("inverse_depth")


def test_picklable_and_lazy(synthetic_file):
    data = PairedDataset(synthetic_file, "train", modalities=["rgb"])
    assert data._file is None  # nothing opened by the constructor
    data[0]
    assert data._file is not None
    clone = pickle.loads(pickle.dumps(data))
    assert clone._file is None
    assert torch.equal(clone[1]["rgb"], data[1]["rgb"])


def test_two_workers_give_the_same_batches_as_the_main_process(synthetic_file):
    transform = PairedTransform(size=(24, 24), train=True)
    data = PairedDataset(synthetic_file, "train", modalities=["rgb", "depth"], labels=["seg", "label"],
                         transform=transform, seed=7)
    serial = list(DataLoader(data, batch_size=8, num_workers=0))
    parallel = list(DataLoader(data, batch_size=8, num_workers=2))
    assert len(serial) == len(parallel) == (len(data) + 7) // 8
    for one, two in zip(serial, parallel):
        for key in ("rgb", "depth", "seg", "label", "index"):
            assert torch.equal(one[key], two[key]), key  # the same computation in another process: the same bits


def test_epoch_and_seed_change_the_augmentation_only(synthetic_file):
    transform = PairedTransform(size=(24, 24), train=True)
    data = PairedDataset(synthetic_file, "train", modalities=["rgb"], transform=transform, seed=0)
    first = data[2]["rgb"]
    assert torch.equal(data[2]["rgb"], first)  # same (seed, epoch, row): same crop, same bits
    data.set_epoch(1)
    assert not torch.equal(data[2]["rgb"], first)


def test_unknown_names_are_clear_errors(synthetic_file):
    with pytest.raises(DataError, match="modality 'thermal' is not defined; this file offers"):
        PairedDataset(synthetic_file, "train", modalities=["thermal"])
    with pytest.raises(DataError, match="no split 'val'"):
        PairedDataset(synthetic_file, "val")
    with pytest.raises(DataError, match=r"no label set \['seg40'\]"):
        PairedDataset(synthetic_file, "train", labels=["seg40"])


def _epoch_batches(loader, data, epoch):
    data.set_epoch(epoch)
    return [batch["rgb"] for batch in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(synthetic_file, context):
    transform = PairedTransform(size=(24, 24), train=True)
    data = PairedDataset(synthetic_file, "train", modalities=["rgb"], transform=transform, seed=3)
    data[0]  # open the file in the parent first: forked workers must reopen it, not share the handle
    loader = DataLoader(data, batch_size=16, num_workers=2, persistent_workers=True,
                        multiprocessing_context=context)
    serial = DataLoader(data, batch_size=16, num_workers=0)
    first, second = _epoch_batches(loader, data, 0), _epoch_batches(loader, data, 1)
    assert not torch.equal(first[0], second[0])
    for parallel, expected in zip(second, _epoch_batches(serial, data, 1)):
        assert torch.equal(parallel, expected)
    clone = pickle.loads(pickle.dumps(data))  # a plain copy keeps the epoch, in memory of its own
    assert clone.epoch == 1
    clone.set_epoch(5)
    assert data.epoch == 1


def test_float16_modality_goes_through_the_transform_like_float32(tmp_path):
    from crossmodal.data.paired_writer import PairedWriter
    values = np.linspace(280, 320, 512, dtype=np.float16).reshape(2, 16, 16, 1)
    for dtype in (np.float16, np.float32):
        with PairedWriter(tmp_path / f"{np.dtype(dtype).name}.h5", 2, source="test", converter="tests") as writer:
            writer.add_modality("thermal", 16, 16, 1, dtype, kind="thermal", units="K")
            writer.write_batch(0, thermal=values.astype(dtype))
            writer.add_split("train", [0, 1])
    samples = [PairedDataset(tmp_path / f"{name}.h5", "train", modalities=["thermal"], seed=4,
                             transform=PairedTransform(size=(8, 8), train=True))[1]["thermal"]
               for name in ("float16", "float32")]
    assert samples[0].shape == (1, 8, 8)
    assert torch.equal(samples[0], samples[1])  # same crop, same values (float16 widens exactly)
