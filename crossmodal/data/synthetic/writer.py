"""The synthetic scenes -> a paired file: render in worker processes, write in chunks, add labels and splits.

Usage: ``generate("scenes.h5", num=4000, size=64, seed=0)``; ``crossmodal prepare synthetic`` is its command line.
"""
from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import numpy as np

from crossmodal import interrupts
from crossmodal.data.codecs import DEFAULT_CODEC
from crossmodal.data.paired_writer import PairedWriter
from crossmodal.data.synthetic.scenes import CLASS_NAMES, IGNORE_INDEX, SEG_CLASS_NAMES, render_scene
from crossmodal.errors import DataError
from crossmodal.progress import sample_bar

CHUNK = 64
MIN_SIZE, MAX_SIZE = 16, 1024
# The provenance name stored in the file (``converter``): the converter's name since the first files, kept so
# that files written before and after the generator moved into the library are alike.
CONVERTER = "data_prep.synthetic"


def _ignore_interrupt(parent: int) -> None:
    # Ctrl-C reaches the whole process group: let the parent alone clean up, without one traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.die_with_parent(parent)  # a parent killed by SIGKILL orphans no worker


def _render_chunk(job: tuple[int, int, int, int, bool]) -> dict[str, Any]:
    start, stop, seed, size, noise = job
    scenes = [render_scene(np.random.default_rng([seed, index]), size=size, noise=noise)
              for index in range(start, stop)]
    return {key: np.stack([scene[key] for scene in scenes]) for key in ("rgb", "depth", "raw_depth", "seg")} | {
        "label": np.array([scene["label"] for scene in scenes], np.int64)}


def _in_order(pool: ProcessPoolExecutor, function, jobs: list, ahead: int) -> Iterator[Any]:
    """``function(job)`` for each job, in order, with at most ``ahead`` jobs in flight: a slow writer never
    has all the rendered chunks waiting in memory. The first ``ahead`` jobs are submitted now, which starts
    the pool's processes (call it where they should start). A worker that dies raises ``BrokenProcessPool``
    from the iterator (``multiprocessing.Pool`` would replace it and wait for its lost chunk for ever)."""
    remaining = iter(jobs)
    pending = deque(pool.submit(function, job) for job in itertools.islice(remaining, ahead))

    def results() -> Iterator[Any]:
        while pending:
            future = pending.popleft()
            pending.extend(pool.submit(function, job) for job in itertools.islice(remaining, 1))
            yield future.result()

    return results()


def _stop(pool: ProcessPoolExecutor, at_once: bool) -> None:
    """Shut the pool down; ``at_once`` (an error, Ctrl-C, SIGTERM) terminates the workers first rather than
    letting their chunks finish, which takes minutes for large scenes."""
    if at_once:
        terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
        if terminate is not None:
            terminate()
        else:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def generate(out: str, num: int = 4000, size: int = 64, seed: int = 0, test_fraction: float = 0.2,
             noise: bool = True, workers: int | None = None, overwrite: bool = False,
             compression: str = DEFAULT_CODEC, depth_storage: str = "uint16") -> None:
    """Render ``num`` scenes of ``size`` x ``size``; scene i depends only on (seed, i)."""
    if num < 2 or not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(out, f"--num must be >= 2 and --size in {MIN_SIZE}..{MAX_SIZE} (got {num}, {size})")
    if not math.isfinite(test_fraction):
        raise DataError(out, f"--test-fraction must be a number in (0, 1), got {test_fraction}")
    num_test = int(round(num * test_fraction))
    if not 0 < num_test < num:
        raise DataError(out, f"--test-fraction {test_fraction} of {num} scenes leaves a split empty")
    workers = max(1, min(workers or os.cpu_count() or 1, 8))
    jobs = [(start, min(start + CHUNK, num), seed, size, noise) for start in range(0, num, CHUNK)]
    options = {"num": num, "size": size, "seed": seed, "test_fraction": test_fraction, "noise": noise}
    labels = np.empty(num, np.int64)
    with PairedWriter(out, num, source=f"crossmodal synthetic scenes (seed {seed})",
                      converter=CONVERTER, options=options, overwrite=overwrite,
                      compression=compression, depth=depth_storage) as writer:
        writer.add_modality("rgb", size, size, 3, np.uint8, kind="rgb", units="sRGB 0-255")
        writer.add_modality("depth", size, size, 1, np.float32, kind="depth", units="m",
                            description="clean z-depth, no holes")
        writer.add_modality("raw_depth", size, size, 1, np.float32, kind="raw_depth", units="m",
                            description="Kinect-like noise, 0 = hole" if noise else "equal to depth")
        writer.add_segmentation("seg", size, size, SEG_CLASS_NAMES, ignore_index=IGNORE_INDEX)
        bar = sample_bar(None, num, "synthetic")
        finished = False
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                   initializer=_ignore_interrupt, initargs=(os.getpid(),)) if workers > 1 else None
        try:
            with interrupts.unseen_by_new_processes():  # the first jobs start the workers
                chunks = _in_order(pool, _render_chunk, jobs, workers + 1) if pool else map(_render_chunk, jobs)
            for (start, *_), chunk in zip(jobs, chunks):
                labels[start:start + len(chunk["label"])] = chunk["label"]
                writer.write_batch(start, rgb=chunk["rgb"], depth=chunk["depth"], raw_depth=chunk["raw_depth"],
                                   seg=chunk["seg"])
                bar.update(len(chunk["label"]))  # re-raises a Ctrl-C swallowed inside a callback
            finished = True
        except BrokenProcessPool:
            raise DataError(out, f"a worker process rendering the scenes died (killed, perhaps for memory, with "
                                 f"{workers} workers of {size} x {size} scenes); nothing was written. Try "
                                 f"--workers 1") from None
        finally:
            if pool:
                _stop(pool, at_once=not finished)
            bar.close()
        writer.add_class_labels("label", labels, CLASS_NAMES)
        order = np.random.default_rng([seed, num]).permutation(num)
        writer.add_split("train", np.sort(order[num_test:]))
        writer.add_split("test", np.sort(order[:num_test]))
