"""``data.loader: device``: a split held on the training device and augmented there per batch (CPU here).

Unaugmented batches equal the DataLoader's; CIE Lab equals OpenCV's; a sample's draws depend only on (seed,
epoch, row); crops, flips and jitter have the CPU pipeline's semantics; a split too large is one line; and a
training run with the device loader finishes and resumes bit for bit.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from crossmodal.data import device as device_module
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.device import DeviceResidentData
from crossmodal.data.device_ops import rgb_to_lab, uniforms
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data.modalities import MODALITIES, Modality, to_range
from crossmodal.data.transforms import PairedTransform
from crossmodal.errors import DataError
from tolerance import gamma

MODALITY_NAMES = ["rgb", "depth", "raw_depth", "lab_l", "lab_ab"]
CPU = torch.device("cpu")
SIZE = 32  # the stored size of both test files


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coordinate_file(tmp_path_factory):
    """64 identical 32 x 32 samples that encode their pixel coordinates: ``pos`` (uint16 labels) = 32 y + x,
    rgb = (8 x, 8 y, 128), depth (uint16 millimetres) = 1000 + 100 row + x."""
    path = tmp_path_factory.mktemp("device") / "coords.h5"
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    with PairedWriter(path, 64, source="test", converter="tests.device") as writer:
        writer.add_modality("rgb", SIZE, SIZE, 3, np.uint8, kind="rgb", units="srgb")
        writer.add_modality("depth", SIZE, SIZE, 1, np.uint16, kind="depth", units="mm")
        writer.add_segmentation("pos", SIZE, SIZE, [str(i) for i in range(SIZE * SIZE)], ignore_index=65535,
                                dtype=np.uint16)
        rgb = np.stack([xs * 8, ys * 8, np.full_like(xs, 128)], -1).astype(np.uint8)
        for row in range(64):
            writer.write(row, rgb=rgb, depth=(1000 + 100 * row + xs)[..., None].astype(np.uint16),
                         pos=(ys * SIZE + xs).astype(np.uint16))
        writer.add_split("train", range(64))
    return path


def device_data(path, transform=None, split="train", modalities=MODALITY_NAMES, labels=("seg", "label"), seed=0):
    dataset = PairedDataset(path, split, list(modalities), list(labels), transform=transform, seed=seed)
    return dataset, DeviceResidentData(dataset, CPU)


# ------------------------------------------------------------------------------------------ unaugmented
@pytest.mark.parametrize("size", [None, (16, 16)])
def test_unaugmented_batches_equal_the_dataloaders(synthetic_file, size):
    """Stored size, and the evaluation transform's 2 x 2 area resize: every key, dtype and value."""
    transform = PairedTransform(size=size, train=False) if size else None
    dataset, data = device_data(synthetic_file, transform)
    positions = [5, 0, 17, 3, 11]
    expected = default_collate([dataset[i] for i in positions])
    got = data.batch(torch.tensor(positions))
    assert list(got) == list(expected) == [*MODALITY_NAMES, "seg", "label", "index", "row"]
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key  # the same arithmetic on the same values: the same bits


def test_an_uneven_evaluation_resize_rounds_like_opencv_but_for_ties(synthetic_file):
    """A 32 -> (24, 20) area resize: OpenCV's float area weights round a few uint8 ties the other way."""
    transform = PairedTransform(size=(24, 20), train=False)
    dataset, data = device_data(synthetic_file, transform, modalities=["rgb", "depth", "raw_depth"])
    expected = default_collate([dataset[i] for i in range(8)])
    got = data.batch(torch.arange(8))
    level = 1 / (255 * 0.224)  # one uint8 level of normalised rgb
    differs = (got["rgb"] - expected["rgb"]).abs()
    assert differs.max() < 1.01 * level and (differs > 1e-5).float().mean() < 0.05
    # On each side an area average of at most 2 x 2 depths (<= 10 m) with float32 weights (each rounded, four
    # products, three sums: gamma(7) of 10 m), then x 0.2 - 1 (gamma(3) of at most 3): twice that apart at most
    torch.testing.assert_close(got["depth"], expected["depth"], atol=2 * (0.2 * gamma(7) * 10 + gamma(3) * 3), rtol=0)
    assert torch.equal(got["raw_depth"], expected["raw_depth"]) and torch.equal(got["seg"], expected["seg"])


def test_lab_equals_opencvs_float_conversion():
    """Bit for bit on 8-bit colours: OpenCV's own table and fixed-point interpolation, and every 8-bit level reaches
    the same 14-bit fixed-point input whether divided by 255 (OpenCV's caller) or scaled by float32(1 / 255)."""
    levels = np.arange(256, dtype=np.float32)
    assert np.array_equal(np.rint((levels / np.float32(255)).astype(np.float64) * (1 << 14)),
                          np.rint((levels * np.float32(1 / 255)).astype(np.float64) * (1 << 14)))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    rgb[0, 0, :6] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]]
    expected = np.stack([cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab) for image in rgb])
    got = rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------------------ determinism
def test_the_hash_is_splitmix64():
    mask = (1 << 64) - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def reference(seed, epoch, row, k):
        state = mix(mix(mix(seed) ^ epoch) ^ row)
        return (mix((state + (k + 1) * 0x9E3779B97F4A7C15) & mask) >> 11) * 2.0 ** -53

    rows = [0, 7, 2 ** 40]
    got = uniforms(2 ** 62 + 3, 5, torch.tensor(rows), 3)
    assert got.tolist() == [[reference(2 ** 62 + 3, 5, row, k) for k in range(3)] for row in rows]


def test_a_samples_augmentation_depends_only_on_seed_epoch_and_row(synthetic_file):
    transform = PairedTransform(size=(24, 24), train=True)
    _, data = device_data(synthetic_file, transform, seed=3)
    data.set_epoch(2)
    sixteen = data.batch(torch.arange(16))
    again = data.batch(torch.arange(16))
    four = data.batch(torch.tensor([9, 2, 14, 5]))
    for key in sixteen:
        assert torch.equal(sixteen[key], again[key]), key
        assert torch.equal(sixteen[key][[9, 2, 14, 5]], four[key]), key
    data.set_epoch(3)
    other_epoch = data.batch(torch.arange(16))
    _, other_seed = device_data(synthetic_file, transform, seed=4)
    other_seed.set_epoch(2)
    for other in (other_epoch, other_seed.batch(torch.arange(16))):
        assert not torch.equal(sixteen["rgb"], other["rgb"]) and not torch.equal(sixteen["seg"], other["seg"])
        assert torch.equal(sixteen["label"], other["label"])


# ------------------------------------------------------------------------------------------ augmentation
def crop_boxes(pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(top, left, height, width, flipped) of each sample from its ``pos`` map (output size = stored size,
    so nearest resampling visits every stored row and column of the crop)."""
    y, x = pos // SIZE, pos % SIZE
    top, bottom = y.amin((1, 2)), y.amax((1, 2))
    left, right = x.amin((1, 2)), x.amax((1, 2))
    flipped = x[:, 0, 0] > x[:, 0, -1]
    return top, left, bottom - top + 1, right - left + 1, flipped


def test_crops_and_flips_follow_the_transforms_ranges(coordinate_file):
    transform = PairedTransform(size=(SIZE, SIZE), train=True, scale=(0.25, 0.8), ratio=(0.5, 2.0),
                                color_jitter=0)
    _, data = device_data(coordinate_file, transform, modalities=["rgb"], labels=["pos"])
    flips, areas = [], []
    for epoch in range(4):
        data.set_epoch(epoch)
        batch = data.batch(torch.arange(64))
        top, left, height, width, flipped = crop_boxes(batch["pos"])
        # rounding of the box to pixels: the area and ratio ranges hold to a pixel
        assert ((height * width) >= 0.25 * SIZE ** 2 - (height + width)).all()
        assert ((height * width) <= 0.8 * SIZE ** 2 + (height + width)).all()
        assert ((width + 1) / height >= 0.5).all() and (width / (height + 1) <= 2.0).all()
        # the mask resampled nearest: the box's stored rows and columns, each repeated or kept, in order
        x, y = batch["pos"] % SIZE, batch["pos"] // SIZE
        assert (x == x[:, :1, :]).all() and (y == y[:, :, :1]).all()
        x = torch.where(flipped[:, None], x[:, 0].flip(1), x[:, 0])
        for steps in (x.diff(dim=1), y[:, :, 0].diff(dim=1)):
            assert ((steps == 0) | (steps == 1)).all()
        # the picture follows the same box and flip: its x ramp (8 x) spans the box's columns
        rgb = batch["rgb"] * 0.229 * 255 + 0.485 * 255
        x_from_rgb = rgb[:, 0, 0, :] / 8
        assert ((x_from_rgb[:, 0] - x_from_rgb[:, -1]).sign() == (flipped.float() * 2 - 1)).all()
        assert (x_from_rgb.amin(1) >= left - 0.01).all() and (x_from_rgb.amax(1) <= left + width - 1 + 0.01).all()
        flips.append(flipped)
        areas.append((height * width).float() / SIZE ** 2)
    flips, areas = torch.cat(flips), torch.cat(areas)
    assert 0.4 < flips.float().mean() < 0.6  # 256 draws: 5 standard deviations
    assert areas.min() < 0.35 and areas.max() > 0.7  # the whole range is used


def test_masks_and_raw_depth_keep_stored_values(synthetic_file):
    dataset, _ = device_data(synthetic_file, modalities=["raw_depth"], labels=["seg"])
    stored = default_collate([dataset[i] for i in range(len(dataset))])
    for size in ((48, 40), (20, 20)):  # enlarging, shrinking
        _, data = device_data(synthetic_file, PairedTransform(size=size, train=True, scale=(0.3, 1.0)),
                              modalities=["raw_depth"], labels=["seg"])
        batch = data.batch(torch.arange(len(data)))
        assert batch["raw_depth"].shape[-2:] == size
        assert set(batch["raw_depth"].unique().tolist()) <= set(stored["raw_depth"].unique().tolist())
        assert set(batch["seg"].unique().tolist()) <= set(stored["seg"].unique().tolist())


def test_colour_jitter_changes_colour_only_and_l_ab_share_it(synthetic_file):
    plain = device_data(synthetic_file, PairedTransform(size=(24, 24), train=True, color_jitter=0))[1]
    jittered = device_data(synthetic_file, PairedTransform(size=(24, 24), train=True, color_jitter=0.4))[1]
    positions = torch.arange(32)
    before, after = plain.batch(positions), jittered.batch(positions)
    for key in ("depth", "raw_depth", "seg", "label"):  # the same geometry, no photometry
        assert torch.equal(before[key], after[key]), key
    changed = (before["rgb"] != after["rgb"]).flatten(1).any(1)
    assert 0.6 < changed.float().mean() < 1.0  # p = 0.8
    # L and ab are those of the jittered rgb picture
    rgb255 = torch.round(after["rgb"] * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
                         + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
    lab = rgb_to_lab(rgb255)
    assert torch.equal(after["lab_l"], lab[:, :1] / 50 - 1)
    a_range, b_range = to_range(-86.183, 98.233), to_range(-107.857, 94.478)
    expected_ab = torch.cat([torch.from_numpy(a_range(lab[:, 1:2].numpy())),
                             torch.from_numpy(b_range(lab[:, 2:].numpy()))], 1)
    assert torch.equal(after["lab_ab"], expected_ab)


def test_stored_values_are_scaled_when_the_file_says_so(coordinate_file):
    """uint16 millimetres with ``scale`` 0.001 (the format's scaled integers) arrive as metres."""
    dataset = PairedDataset(coordinate_file, "train", ["depth"], [])
    object.__setattr__(dataset.layout.modalities["depth"], "scale", 0.001)
    depth = DeviceResidentData(dataset, CPU).batch(torch.tensor([0, 30]))["depth"]
    metres = torch.tensor([1.0, 4.0])[:, None] + torch.arange(SIZE) / 1000
    # millimetres x float32(0.001), then x 0.2 - 1, against float32 (1 + x / 1000) / 5 - 1: five roundings on each
    # side of values of at most 4.031 / 5 + 1
    torch.testing.assert_close(depth[:, 0, 5, :], metres / 5 - 1, atol=2 * gamma(5) * (4.031 / 5 + 1), rtol=0)


# ------------------------------------------------------------------------------------------ refusals
def test_a_split_too_large_for_the_device_is_one_line(synthetic_file, monkeypatch):
    monkeypatch.setattr(device_module, "free_memory", lambda device: 1000)
    with pytest.raises(DataError) as caught:
        device_data(synthetic_file)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{synthetic_file}: split 'train' is too large for the device")
    assert "GiB needed" in message and message.endswith("use data.loader: workers")


def test_a_modality_without_a_device_implementation_is_one_line(synthetic_file, monkeypatch):
    gray = Modality("gray", 1, "rgb", to_range(0, 255), derive=lambda rgb: rgb[..., :1].astype(np.float32))
    monkeypatch.setitem(MODALITIES, "gray", gray)
    with pytest.raises(DataError, match="modality 'gray' has no device implementation"):
        device_data(synthetic_file, modalities=["gray"])


# ------------------------------------------------------------------------------------------ training
class Crash(Exception):
    pass


def test_training_on_the_device_loader_finishes_and_resumes_bit_for_bit(synthetic_file, tmp_path):
    """An augmented teacher (classes and segmentation) over 2 epochs of 4 steps, interrupted after step 3 (its
    last checkpoint at step 2, mid-epoch) and resumed through the CLI, ends as the uninterrupted run."""
    from conftest import ROOT, cli

    from crossmodal.train.run import run_training

    config = str(ROOT / "experiments" / "configs" / "smoke_teacher.yaml")
    overrides = [f"data.path={synthetic_file}", "data.loader=device", "data.augment=true", "data.size=[24, 24]",
                 "train.batch_size=8", "train.epochs=2", "train.progress=false", "train.log_every=1",
                 "train.checkpoint_every_steps=2", "task.decoder_channels=8"]
    seen = []
    _, record = run_training("train-teacher", config, overrides, out=str(tmp_path / "uninterrupted"),
                             hooks=[lambda trainer: seen.append(type(trainer.setup.train_data).__name__)])
    assert seen == ["DeviceResidentData"] * 8 and math.isfinite(record["train_loss"]) and "eval_miou" in record

    def crash(trainer) -> None:
        if trainer.step == 3:
            raise Crash

    with pytest.raises(Crash):
        run_training("train-teacher", config, overrides, out=str(tmp_path / "resumed"), hooks=[crash])
    result = cli("train-teacher", "--resume", tmp_path / "resumed")
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout and "step 2" in result.stdout
    expected, got = (torch.load(tmp_path / run / "checkpoint.pt", map_location="cpu", weights_only=True)
                     for run in ("uninterrupted", "resumed"))
    assert got["step"] == expected["step"] == 8
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert (tmp_path / "uninterrupted" / "metrics_steps.csv").read_text().count("\n") == 9


def test_a_cached_distillation_on_the_device_loader_finishes(synthetic_file, tmp_path):
    """The teacher's features are cached from a plain view of the split; the student's batches come from the
    device, and their ``index`` finds the cached rows."""
    from conftest import ROOT

    from crossmodal.train.run import run_training

    config = str(ROOT / "experiments" / "configs" / "smoke_distill.yaml")
    overrides = [f"data.path={synthetic_file}", "data.loader=device", "train.batch_size=8", "train.epochs=1",
                 "train.progress=false", "distill.options.crd.num_negatives=16"]
    _, record = run_training("distill", config, overrides, out=str(tmp_path / "run"))
    assert math.isfinite(record["train_loss"]) and (tmp_path / "run" / "teacher_cache.h5").is_file()
    assert (tmp_path / "run" / "student.safetensors").is_file()
