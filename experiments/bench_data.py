"""Samples/s of the HDF5 reader against decoding the same rgb + depth pairs from PNG files, side by side.

Both paths return the same batches of normalised tensors (``rgb`` B x 3 x H x W, ``depth`` B x 1 x H x W,
float32), through the same DataLoader settings, at 480 x 640 (real NYU-Depth V2 frames from
../shared/data/nyu_mini, cycled) and at 64 x 64 (the synthetic generator), with 0 and 2 workers. The PNG
baseline is the usual per-sample dataset with torch's default collate; the HDF5 reader reads whole batches
(``PairedDataset.__getitems__`` with ``crossmodal.data.collate``), as the toolkit's own loaders do. Files are
read once before timing, so both paths run from the page cache and the figures compare decoding, not the disk.

The HDF5 file is written once per codec: the default (Blosc LZ4 + byte shuffle, depth as uint16 mm), then
``lzf`` (the version-1 layout: lzf + shuffle, depth as float32 metres), ``none`` (uncompressed) and
``blosc-zstd``. ``MB/s`` is the default reader's output bytes per second at 480 x 640 with 0 workers, beside a
single-threaded memcpy of the same bytes: the physical limit of producing those tensors.

Usage: python experiments/bench_data.py [--samples-480 N] [--samples-64 N] [--seconds S] [--codecs ...]
Ends with: hdf5-vs-png 480x640: w0=<r>x w2=<r>x; 64x64: w0=<r>x w2=<r>x; MB/s=<m> (<p>% of memcpy)
     then: hdf5(<codec>)-vs-png ... (one line per other codec), and the file sizes at 480 x 640
Targets (2 CPU cores): default codec >= 5x at 480 x 640 with 0 workers, >= 3x with 2 workers; the default
file no larger than the lzf (version-1) file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from crossmodal.data.codecs import CODECS, DEFAULT_CODEC, read_physical  # noqa: E402
from crossmodal.data.dataset import PairedDataset, collate  # noqa: E402
from crossmodal.data.modalities import MODALITIES  # noqa: E402
from crossmodal.data.synthetic import generate  # noqa: E402
from crossmodal.engine.loop import PREFETCH  # noqa: E402
from crossmodal.data_prep.pairs import convert as convert_pairs  # noqa: E402
from crossmodal.runtime import load_average, machine_description  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class PngPairs(Dataset):
    """The baseline: decode <id>_rgb.png and the 16-bit <id>_depth.png per item, same outputs as PairedDataset."""

    def __init__(self, folder: Path, ids: list[str]) -> None:
        self.folder, self.ids = folder, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        rgb = cv2.cvtColor(cv2.imread(str(self.folder / f"{self.ids[index]}_rgb.png")), cv2.COLOR_BGR2RGB)
        depth = cv2.imread(str(self.folder / f"{self.ids[index]}_depth.png"), cv2.IMREAD_UNCHANGED)
        depth = (depth.astype(np.float32) * np.float32(0.001))[..., None]
        sample = {}
        for name, array in (("rgb", rgb), ("depth", depth)):
            value = np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32)
            sample[name] = torch.from_numpy(MODALITIES[name].normalize(value))
        sample["index"] = index
        return sample


def write_png_pairs(folder: Path, rgb: np.ndarray, depth_m: np.ndarray) -> list[str]:
    """Write rgb (N, H, W, 3) and depth in metres as 16-bit millimetre PNGs (OpenCV's default compression)."""
    ids = []
    for index in range(len(rgb)):
        sample_id = f"{index:05d}"
        cv2.imwrite(str(folder / f"{sample_id}_rgb.png"), rgb[index][..., ::-1])
        cv2.imwrite(str(folder / f"{sample_id}_depth.png"), np.round(depth_m[index] * 1000).astype(np.uint16))
        ids.append(sample_id)
    return ids


def samples_per_second(dataset: Dataset, workers: int, seconds: float, batch_size: int) -> float:
    collate_fn = collate if isinstance(dataset, PairedDataset) else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0, collate_fn=collate_fn,
                        prefetch_factor=PREFETCH if workers > 0 else None)
    for _ in loader:  # warm-up: page cache, worker start-up
        break
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            count += len(batch["index"])
    return count / (time.perf_counter() - start)


def memcpy_bytes_per_second(nbytes: int, seconds: float = 1.0) -> float:
    """One thread copying ``nbytes`` into a fresh buffer, as a loader must fill new batch tensors."""
    source = np.ones(nbytes // 4, np.float32)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.copyto(np.empty_like(source), source)
        count += 1
    return count * source.nbytes / (time.perf_counter() - start)


def codec_options(codec: str) -> dict:
    """The converters' options for one measured file: lzf is written as version 1 stored it."""
    return {"compression": codec, "depth_storage": "float32" if codec == "lzf" else "uint16"}


def reader(path: Path) -> PairedDataset:
    """The HDF5 reader as the training loop sets it up (workers reuse their batches' shared memory)."""
    dataset = PairedDataset(path, None, modalities=["rgb", "depth"])
    dataset.recycle_batches(PREFETCH + 2)
    return dataset


def build_480(workdir: Path, samples: int, codecs: list[str]) -> tuple[dict[str, Dataset], Dataset, dict]:
    folder = workdir / "png480"
    folder.mkdir()
    frames = sorted((SHARED / "nyu_mini").glob("*_rgb.png"))
    if not frames:
        sys.exit(f"{SHARED / 'nyu_mini'}: the real NYU frames are missing")
    for index in range(samples):
        source = frames[index % len(frames)]
        shutil.copy(source, folder / f"{index:05d}_rgb.png")
        shutil.copy(str(source).replace("_rgb", "_depth"), folder / f"{index:05d}_depth.png")
    ids = [f"{index:05d}" for index in range(samples)]
    readers, sizes = {}, {}
    for codec in codecs:
        path = workdir / f"nyu480_{codec}.h5"
        convert_pairs(str(folder), str(path), **codec_options(codec))
        readers[codec] = reader(path)
        sizes[codec] = os.path.getsize(path)
    return readers, PngPairs(folder, ids), sizes


def build_64(workdir: Path, samples: int, codecs: list[str]) -> tuple[dict[str, Dataset], Dataset, dict]:
    readers = {}
    for codec in codecs:
        path = workdir / f"synthetic_{codec}.h5"
        generate(str(path), num=samples, size=64, seed=0, **codec_options(codec))
        readers[codec] = reader(path)
    with h5py.File(workdir / f"synthetic_{codecs[0]}.h5", "r") as handle:
        rgb, depth = handle["modalities/rgb"][()], read_physical(handle["modalities/depth"])[..., 0]
    folder = workdir / "png64"
    folder.mkdir()
    ids = write_png_pairs(folder, rgb, depth)
    return readers, PngPairs(folder, ids), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-480", type=int, default=60)
    parser.add_argument("--samples-64", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    parser.add_argument("--codecs", nargs="+", default=[DEFAULT_CODEC, "lzf", "none", "blosc-zstd"],
                        choices=list(CODECS), help="codecs to measure; the first one gives the headline line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codecs = list(dict.fromkeys(args.codecs))
    print(f"before: {machine_description()}")
    ratios: dict[tuple[str, str, int], float] = {}
    rates_480: dict[str, float] = {}
    print(f"{'size':<8} {'workers':>7} {'png/s':>8} " + " ".join(f"{c + '/s':>13} {'ratio':>6}" for c in codecs))
    cases = (("480x640", build_480, args.samples_480, 8), ("64x64", build_64, args.samples_64, 64))
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, build, samples, batch_size in cases:
            readers, png, built_sizes = build(Path(tmp), samples, codecs)
            sizes.update(built_sizes)
            for workers in (0, 2):
                png_rate = samples_per_second(png, workers, args.seconds, batch_size)
                cells = []
                for codec in codecs:
                    rate = samples_per_second(readers[codec], workers, args.seconds, batch_size)
                    ratios[codec, label, workers] = rate / png_rate
                    if label == "480x640" and workers == 0:
                        rates_480[codec] = rate
                    cells.append(f"{rate:>13.1f} {ratios[codec, label, workers]:>5.2f}x")
                print(f"{label:<8} {workers:>7} {png_rate:>8.1f} " + " ".join(cells), flush=True)
    sample_bytes = 480 * 640 * 4 * (3 + 1)  # the float32 rgb and depth tensors of one sample
    memcpy = memcpy_bytes_per_second(sample_bytes * 8)
    print(f"after: {load_average()}")
    for position, codec in enumerate(codecs):
        prefix = "hdf5" if position == 0 else f"hdf5({codec})"
        line = "{}-vs-png 480x640: w0={:.2f}x w2={:.2f}x; 64x64: w0={:.2f}x w2={:.2f}x".format(
            prefix, ratios[codec, "480x640", 0], ratios[codec, "480x640", 2], ratios[codec, "64x64", 0],
            ratios[codec, "64x64", 2])
        throughput = rates_480[codec] * sample_bytes
        print(f"{line}; MB/s={throughput / 1e6:.0f} ({100 * throughput / memcpy:.0f}% of memcpy)")
    print("size 480x640 ({} frames): {}".format(
        args.samples_480, ", ".join(f"{codec} {sizes[codec] / 1e6:.1f} MB" for codec in codecs)))


if __name__ == "__main__":
    main()
