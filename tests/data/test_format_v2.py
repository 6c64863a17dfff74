"""Format version 2: codecs and checksums, depth as uint16 millimetres, version-1 files still read, repacking,
and the bad inputs (a damaged chunk, a missing codec plugin, depth beyond the stored range)."""
from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
import pytest
import torch

from conftest import cli, error_line
from crossmodal.data import codecs
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import read_layout
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data.transforms import PairedTransform
from crossmodal.data_prep import repack
from crossmodal.errors import DataError

NUM, H, W = 6, 8, 10


def scene_arrays(seed=0):
    rng = np.random.default_rng(seed)
    depth_mm = rng.integers(300, 9000, (NUM, H, W, 1))
    raw_mm = np.where(rng.random((NUM, H, W, 1)) < 0.2, 0, depth_mm)
    return {"rgb": rng.integers(0, 256, (NUM, H, W, 3), dtype=np.uint8),
            # depth on the sensors' millimetre grid, as a v1 converter stored it: float32(mm) * float32(0.001)
            "depth": depth_mm.astype(np.float32) * np.float32(0.001),
            "raw_depth": raw_mm.astype(np.float32) * np.float32(0.001),
            "seg": rng.integers(0, 3, (NUM, H, W)).astype(np.uint8)}


def write_v1(path, arrays):
    """A file exactly as version 1 wrote it: lzf + shuffle, float32 metres, no checksums."""
    with h5py.File(path, "w") as handle:
        handle.attrs.update(format="crossmodal-paired", format_version=1, num_samples=NUM, source="test",
                            converter="tests", options='{"compression": "lzf"}')
        for name in ("rgb", "depth", "raw_depth"):
            values = arrays[name]
            dset = handle.create_dataset(f"modalities/{name}", data=values, chunks=(1, *values.shape[1:]),
                                         compression="lzf", shuffle=True)
            dset.attrs.update(kind=name, units="sRGB 0-255" if name == "rgb" else "m",
                              value_range=[float(values.min()), float(values.max())])
        seg = handle.create_dataset("labels/seg", data=arrays["seg"], chunks=(1, H, W), compression="lzf")
        seg.attrs.update(type="segmentation", num_classes=3, class_names=["a", "b", "c"], ignore_index=255)
        handle.create_dataset("splits/train", data=np.arange(NUM, dtype=np.int64))


def read_all(path, transform=None):
    data = PairedDataset(path, "train", modalities=["rgb", "depth", "raw_depth", "lab_l", "lab_ab"],
                         labels=["seg"], transform=transform, seed=3)
    return [data[i] for i in range(len(data))]


@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc-zstd", "lzf", "none"])
def test_a_v1_file_and_its_v2_repack_read_to_identical_tensors(tmp_path, codec):
    arrays = scene_arrays()
    write_v1(tmp_path / "v1.h5", arrays)
    repack.convert(str(tmp_path / "v1.h5"), str(tmp_path / "v2.h5"), compression=codec)
    layout = read_layout(tmp_path / "v2.h5")
    assert layout.format_version == 2 and read_layout(tmp_path / "v1.h5").format_version == 1
    assert layout.modalities["depth"].dtype == np.uint16 and layout.modalities["depth"].scale == 0.001
    assert all(info.checksum for info in layout.modalities.values())
    transform = PairedTransform(size=(6, 6), train=True)
    for augment in (None, transform):
        for old, new in zip(read_all(tmp_path / "v1.h5", augment), read_all(tmp_path / "v2.h5", augment)):
            assert old.keys() == new.keys()
            for key, value in old.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, new[key]), key
                else:
                    assert value == new[key], key


def test_the_default_file_is_no_larger_than_v1_lzf(tmp_path, shared_data):
    """NYU frames: blosc-lz4 with uint16 depth against v1's lzf with float32 depth."""
    import cv2

    frames = sorted((shared_data / "nyu_mini").glob("*_rgb.png"))[:4]
    rgb = np.stack([cv2.imread(str(f))[..., ::-1] for f in frames])
    depth = np.stack([cv2.imread(str(f).replace("_rgb", "_depth"), cv2.IMREAD_UNCHANGED) for f in frames])
    depth = depth[..., None].astype(np.float32) * np.float32(0.001)
    global NUM, H, W
    saved = NUM, H, W
    NUM, H, W = len(frames), *rgb.shape[1:3]
    try:
        arrays = {"rgb": rgb, "depth": depth, "raw_depth": depth, "seg": np.zeros((NUM, H, W), np.uint8)}
        write_v1(tmp_path / "v1.h5", arrays)
        repack.convert(str(tmp_path / "v1.h5"), str(tmp_path / "v2.h5"))
    finally:
        NUM, H, W = saved
    assert os.path.getsize(tmp_path / "v2.h5") < os.path.getsize(tmp_path / "v1.h5")


def corrupt(path, dataset, row):
    with h5py.File(path, "r") as handle:
        info = handle[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (handle[dataset].ndim - 1))
    with open(path, "r+b") as handle:  # zero a run inside the chunk: what a bad sector leaves
        handle.seek(info.byte_offset + info.size // 3)
        handle.write(b"\0" * max(4, info.size // 3))


@pytest.mark.parametrize("codec", ["blosc-lz4", "none"])
def test_a_damaged_chunk_is_an_error_naming_file_modality_and_row(tmp_path, codec):
    write_v1(tmp_path / "v1.h5", scene_arrays())
    path = tmp_path / "v2.h5"
    repack.convert(str(tmp_path / "v1.h5"), str(path), compression=codec)
    corrupt(path, "modalities/depth", 4)
    data = PairedDataset(path, "train", modalities=["rgb", "depth"])
    data[3]  # the other rows still read
    with pytest.raises(DataError) as error:
        data[4]
    assert str(error.value).startswith(f"{path}: modalities/depth row 4: a damaged chunk")
    result = cli("inspect", path, "--verify")
    assert error_line(result).startswith(f"crossmodal inspect: error: {path}: modalities/depth row 4: a damaged chunk")
    assert "verify: modalities/depth: damaged rows 4: a damaged chunk" in result.stdout
    assert result.returncode == 2


def test_verify_reads_every_chunk_of_an_intact_file(tmp_path):
    write_v1(tmp_path / "v1.h5", scene_arrays())
    result = cli("inspect", tmp_path / "v1.h5", "--verify")
    assert result.returncode == 0
    assert f"verify: all {4 * NUM + 1} chunks read back intact" in result.stdout  # 3 modalities, 1 label map, a split
    assert "codec lzf + shuffle, no checksum" in result.stdout


def test_a_missing_codec_plugin_is_one_line_naming_the_file(tmp_path, monkeypatch):
    write_v1(tmp_path / "v1.h5", scene_arrays())
    repack.convert(str(tmp_path / "v1.h5"), str(tmp_path / "v2.h5"))
    available = h5py.h5z.filter_avail
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda fid: fid != 32001 and available(fid))
    with pytest.raises(DataError) as error:
        read_layout(tmp_path / "v2.h5")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'v2.h5'}: modality 'depth' is compressed with blosc (HDF5 filter 32001)")
    assert "pip install hdf5plugin" in message and "\n" not in message


def test_depth_beyond_the_uint16_range_is_clipped_and_counted(tmp_path):
    depth = np.full((3, 4, 4, 1), 2.0, np.float32)
    depth[0, 0, 0], depth[1, 1, 1], depth[2, 2, 2] = 70.0, np.nan, -1.0
    with PairedWriter(tmp_path / "d.h5", 3, source="t", converter="tests") as writer:
        writer.add_modality("depth", 4, 4, 1, np.float32, kind="depth", units="m")
        writer.write_batch(0, depth=depth)
    info = read_layout(tmp_path / "d.h5").modalities["depth"]
    assert (info.clipped, info.nonfinite) == (2, 1)
    with h5py.File(tmp_path / "d.h5", "r") as handle:
        values = codecs.read_physical(handle["modalities/depth"])
    assert values[0, 0, 0, 0] == np.float32(65535) * np.float32(0.001)
    assert values[1, 1, 1, 0] == 0 and values[2, 2, 2, 0] == 0 and values[0, 1, 1, 0] == 2.0
    text = cli("inspect", tmp_path / "d.h5").stdout
    assert "stored x 0.001 (2 values clipped to the stored range, 1 non-finite written as holes)" in text
    with PairedWriter(tmp_path / "f.h5", 3, source="t", converter="tests", depth="float32") as writer:
        writer.add_modality("depth", 4, 4, 1, np.float32, kind="depth", units="m")
        writer.write_batch(0, depth=depth)
    assert read_layout(tmp_path / "f.h5").modalities["depth"].dtype == np.float32


def test_an_interrupted_repack_leaves_the_source_untouched_and_nothing_at_the_destination(tmp_path, monkeypatch):
    write_v1(tmp_path / "v1.h5", scene_arrays())
    before = hashlib.sha256((tmp_path / "v1.h5").read_bytes()).hexdigest()
    monkeypatch.setattr(repack, "ROWS_PER_BLOCK", 2)
    calls = []

    def interrupted(self, start, **arrays):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, start, **arrays)

    original = PairedWriter.write_batch
    monkeypatch.setattr(PairedWriter, "write_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repack.convert(str(tmp_path / "v1.h5"), str(tmp_path / "v2.h5"))
    assert sorted(os.listdir(tmp_path)) == ["v1.h5"]
    assert hashlib.sha256((tmp_path / "v1.h5").read_bytes()).hexdigest() == before


def test_repack_reads_a_damaged_source_as_one_line_and_writes_nothing(tmp_path):
    write_v1(tmp_path / "v1.h5", scene_arrays())
    repack.convert(str(tmp_path / "v1.h5"), str(tmp_path / "v2.h5"))
    corrupt(tmp_path / "v2.h5", "modalities/rgb", 1)
    result = cli("prepare", "repack", "--src", tmp_path / "v2.h5", "--out", tmp_path / "v3.h5")
    assert f"error: {tmp_path / 'v2.h5'}: modalities/rgb rows 0..5: a damaged chunk" in error_line(result)
    assert not (tmp_path / "v3.h5").exists() and sorted(os.listdir(tmp_path)) == ["v1.h5", "v2.h5"]


def test_prepare_lists_the_codecs_and_refuses_an_unknown_one(tmp_path):
    help_text = cli("prepare", "synthetic", "--help").stdout
    assert all(name in help_text for name in codecs.CODECS) and "checksum" in help_text
    result = cli("prepare", "synthetic", "--out", tmp_path / "s.h5", "--compression", "gzip")
    assert result.returncode == 2 and "invalid choice: 'gzip'" in result.stderr


def test_the_plain_h5py_recipe_of_docs_format_reads_a_v2_file(tmp_path):
    """docs/format.md's snippet, run as written in a fresh Python without crossmodal: ``import hdf5plugin``
    is all a reader needs, and its depth is the reader's metres."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    snippet = re.search(r"```python\n(import h5py\n.*?)```", text, re.S).group(1)
    arrays = scene_arrays()
    with PairedWriter(tmp_path / "nyu.h5", NUM, source="t", converter="tests") as writer:
        writer.add_modality("rgb", H, W, 3, np.uint8, kind="rgb", units="sRGB 0-255")
        writer.add_modality("depth", H, W, 1, np.float32, kind="depth", units="m")
        writer.add_segmentation("seg13", H, W, [f"c{i}" for i in range(13)])
        writer.write_batch(0, rgb=arrays["rgb"], depth=arrays["depth"], seg13=arrays["seg"])
        writer.add_split("train", range(NUM))
    assert read_layout(tmp_path / "nyu.h5").modalities["depth"].codec.startswith("blosc")
    check = "\nnp.save('depth.npy', depth); np.save('rgb.npy', rgb); print(len(train_rows), seg13.shape)"
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['crossmodal'] = None\n" + snippet + check],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(NUM), f"({H},", f"{W})"]
    assert np.array_equal(np.load(tmp_path / "depth.npy"), arrays["depth"][0])
    assert np.array_equal(np.load(tmp_path / "rgb.npy"), arrays["rgb"][0])


def test_a_damaged_chunk_read_by_a_dataloader_worker_is_the_same_one_line_error(tmp_path):
    """torch re-raises a worker's exception from its formatted traceback: the user still gets one line."""
    from torch.utils.data import DataLoader

    from crossmodal.data.dataset import collate

    write_v1(tmp_path / "v1.h5", scene_arrays())
    path = tmp_path / "v2.h5"
    repack.convert(str(tmp_path / "v1.h5"), str(path))
    corrupt(path, "modalities/depth", 4)
    data = PairedDataset(path, "train", modalities=["rgb", "depth"])
    batches = iter(DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate))
    with pytest.raises(DataError) as error:
        list(batches)
    batches._shutdown_workers()  # now: left to the garbage collector, it waits 10 s for the workers
    assert str(error.value).startswith(f"{path}: modalities/depth row 4: a damaged chunk") and "\n" not in str(error.value)
    assert error.value.path == str(path) and error.value.problem.startswith("modalities/depth row 4")


def test_damaged_class_labels_or_splits_are_one_line_when_the_file_is_opened(tmp_path, synthetic_file):
    """Image-level classes and splits carry a checksum too: the layout check reads them whole."""
    import shutil

    for dataset in ("labels/label", "splits/train"):
        path = tmp_path / f"{dataset.replace('/', '_')}.h5"
        shutil.copy(synthetic_file, path)
        with h5py.File(path, "r") as handle:
            assert handle[dataset].fletcher32
        corrupt(path, dataset, 0)
        with pytest.raises(DataError) as error:
            PairedDataset(path, "train", modalities=["rgb"], labels=["label"])
        rows = len(h5py.File(path, "r")[dataset])  # in one chunk
        assert str(error.value).startswith(f"{path}: {dataset} rows 0..{rows - 1}: a damaged chunk")
        assert "\n" not in str(error.value)
        result = cli("inspect", path, "--verify")
        assert result.returncode == 2
        assert f"verify: {dataset}: damaged rows 0, 1, 2, 3" in result.stdout
        assert error_line(result).startswith(f"crossmodal inspect: error: {path}: {dataset} row 0: a damaged chunk")
