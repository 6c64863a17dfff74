"""Samples/s of the HDF5 reader against decoding the same rgb + depth pairs from PNG files, side by side.

Both paths return the same dicts of normalised tensors (``rgb`` 3 x H x W, ``depth`` 1 x H x W), through the
same DataLoader settings, at 480 x 640 (real NYU-Depth V2 frames from ../shared/data/nyu_mini, cycled) and at
64 x 64 (the synthetic generator), with 0 and 2 workers. Files are read once before timing, so both paths run
from the page cache and the figures compare decoding, not the disk. The HDF5 file is measured twice: with the
default lzf + shuffle chunks and written with ``--compression none``.

Usage: python experiments/bench_data.py [--samples-480 N] [--samples-64 N] [--seconds S]
Ends with: hdf5-vs-png 480x640: w0=<ratio>x w2=<ratio>x; 64x64: w0=<ratio>x w2=<ratio>x
     then: hdf5(none)-vs-png ... (the same for the uncompressed file)
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

from crossmodal.data.dataset import PairedDataset  # noqa: E402
from crossmodal.data.modalities import MODALITIES  # noqa: E402
from crossmodal.data.synthetic import generate  # noqa: E402
from crossmodal.data_prep.pairs import convert as convert_pairs  # noqa: E402

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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0)
    for _ in loader:  # warm-up: page cache, worker start-up
        break
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            count += len(batch["index"])
    return count / (time.perf_counter() - start)


def build_480(workdir: Path, samples: int) -> tuple[Dataset, Dataset, Dataset]:
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
    convert_pairs(str(folder), str(workdir / "nyu480.h5"))
    convert_pairs(str(folder), str(workdir / "nyu480_none.h5"), compression="none")
    return (PairedDataset(workdir / "nyu480.h5", None, modalities=["rgb", "depth"]),
            PairedDataset(workdir / "nyu480_none.h5", None, modalities=["rgb", "depth"]), PngPairs(folder, ids))


def build_64(workdir: Path, samples: int) -> tuple[Dataset, Dataset, Dataset]:
    generate(str(workdir / "synthetic.h5"), num=samples, size=64, seed=0)
    generate(str(workdir / "synthetic_none.h5"), num=samples, size=64, seed=0, compression="none")
    with h5py.File(workdir / "synthetic.h5", "r") as handle:
        rgb, depth = handle["modalities/rgb"][()], handle["modalities/depth"][..., 0]
    folder = workdir / "png64"
    folder.mkdir()
    ids = write_png_pairs(folder, rgb, depth)
    return (PairedDataset(workdir / "synthetic.h5", None, modalities=["rgb", "depth"]),
            PairedDataset(workdir / "synthetic_none.h5", None, modalities=["rgb", "depth"]), PngPairs(folder, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-480", type=int, default=60)
    parser.add_argument("--samples-64", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios: dict[tuple[str, str, int], float] = {}
    print(f"{'size':<8} {'workers':>7} {'hdf5-lzf/s':>11} {'hdf5-none/s':>12} {'png/s':>8} "
          f"{'lzf/png':>8} {'none/png':>9}")
    cases = (("480x640", build_480, args.samples_480, 8), ("64x64", build_64, args.samples_64, 64))
    with tempfile.TemporaryDirectory() as tmp:
        for label, build, samples, batch_size in cases:
            lzf, plain, png = build(Path(tmp), samples)
            for workers in (0, 2):
                rates = {name: samples_per_second(data, workers, args.seconds, batch_size)
                         for name, data in (("lzf", lzf), ("none", plain), ("png", png))}
                for name in ("lzf", "none"):
                    ratios[name, label, workers] = rates[name] / rates["png"]
                print(f"{label:<8} {workers:>7} {rates['lzf']:>11.1f} {rates['none']:>12.1f} {rates['png']:>8.1f} "
                      f"{ratios['lzf', label, workers]:>7.2f}x {ratios['none', label, workers]:>8.2f}x", flush=True)
    for name, prefix in (("lzf", "hdf5"), ("none", "hdf5(none)")):
        print("{}-vs-png 480x640: w0={:.2f}x w2={:.2f}x; 64x64: w0={:.2f}x w2={:.2f}x".format(
            prefix, ratios[name, "480x640", 0], ratios[name, "480x640", 2], ratios[name, "64x64", 0],
            ratios[name, "64x64", 2]))


if __name__ == "__main__":
    main()
