"""What the row CRC-32s cost the reader: samples/s of the same file read with and without them.

One file per codec (the default Blosc LZ4 and ``none``, where the CRC's share is largest) of rgb + depth pairs
at 480 x 640 (smooth pictures with sensor-like noise, depth in millimetres) and at 64 x 64; a copy of each with
its ``/crc32`` group and root attribute removed is what a file written before the CRC-32s looks like to the
reader. Both are read whole through ``PairedDataset.__getitems__`` (batches of 16, no workers, no
augmentation: the reader's own cost, nothing to hide it), alternating rounds, from the page cache; the rate is
per second of this process's CPU time (the machine may be shared), the best of the rounds.

Usage: python experiments/bench_row_crc.py [--rounds R] [--samples N]
Prints the CPU and the load average first (the load again last), then one line per codec and size:
``<codec> <H>x<W>: with CRC <a> samples/s, without <b>: ratio <a/b>``
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from crossmodal.data import integrity  # noqa: E402
from crossmodal.data.dataset import PairedDataset  # noqa: E402
from crossmodal.data.paired_writer import PairedWriter  # noqa: E402
from crossmodal.runtime import load_average, machine_description  # noqa: E402


def write(path: str, num: int, size: tuple[int, int], codec: str) -> None:
    rng = np.random.default_rng(0)
    height, width = size
    with PairedWriter(path, num, source="bench", converter="bench", compression=codec, overwrite=True) as writer:
        writer.add_modality("rgb", height, width, 3, np.uint8, kind="rgb", units="srgb")
        writer.add_modality("depth", height, width, 1, np.float32, kind="depth", units="m")
        for row in range(num):
            smooth = cv2.resize(rng.random((12, 16, 4), np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
            noise = rng.normal(0, 0.01, (height, width, 4)).astype(np.float32)
            picture = np.clip(smooth + noise, 0, 1)
            writer.write(row, rgb=(picture[..., :3] * 255).astype(np.uint8), depth=0.5 + 8 * picture[..., 3])
        writer.add_split("train", range(num))


def without_crcs(path: str, copy: str) -> None:
    shutil.copy(path, copy)
    with h5py.File(copy, "a") as handle:
        del handle[integrity.GROUP]
        del handle.attrs[integrity.ROOT_ATTR]


def samples_per_second(path: str) -> float:
    data = PairedDataset(path, "train", modalities=["rgb", "depth"])
    start = time.process_time()  # CPU time of this process: less disturbed by other load than the wall clock
    for first in range(0, len(data), 16):
        data.__getitems__(range(first, min(first + 16, len(data))))
    return len(data) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=64, help="samples at 480 x 640 (x 50 at 64 x 64)")
    args = parser.parse_args()
    print(f"before: {machine_description()}", flush=True)
    folder = tempfile.mkdtemp(prefix="bench_row_crc_")
    try:
        for codec in ("blosc-lz4", "none"):
            for size, num in (((480, 640), args.samples), ((64, 64), 50 * args.samples)):
                with_crc, plain = os.path.join(folder, "crc.h5"), os.path.join(folder, "plain.h5")
                write(with_crc, num, size, codec)
                without_crcs(with_crc, plain)
                samples_per_second(with_crc), samples_per_second(plain)  # into the page cache
                rates = {with_crc: [], plain: []}
                for _ in range(args.rounds):
                    for path in rates:
                        rates[path].append(samples_per_second(path))
                a, b = max(rates[with_crc]), max(rates[plain])  # best round: the least disturbed by other load
                print(f"{codec} {size[0]}x{size[1]}: with CRC {a:.0f} samples/s, without {b:.0f}: ratio {a / b:.3f}",
                      flush=True)
    finally:
        shutil.rmtree(folder)
    print(f"after: {load_average()}")


if __name__ == "__main__":
    main()
