"""A disk that fills up at each moment a command writes: ``prepare`` of each source, ``distill``'s teacher cache
and checkpoint, ``probe``'s feature cache and ``--json``, ``segment`` and ``report``. Each must end in one line
naming the file (``PATH: cannot write it: no space left on the device``), exit 2, and leave no temporary file.

A real full disk is a small tmpfs (root and ``mount`` needed; elsewhere those tests skip saying why) filled to
within a few KiB by a filler file, so that the failure comes at the intended write whatever else is free. Each
moment has an injected twin that always runs: the library raises what it raises on a full disk (HDF5's
RuntimeError with ``errno = 28`` in its text, torch's "unexpected pos", safetensors' SafetensorError, an
OSError), at that writer. Also here: a read-only place said as such. A closed pipe and a run folder deleted while
training are in test_pipes_and_vanished_folders.py.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, cli, error_line
from conftest import mounted_tmpfs
from test_disk_and_signals import read_only_disk  # noqa: F401 (a fixture)

SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"
SMOKE_TEACHER = ROOT / "experiments" / "configs" / "smoke_teacher.yaml"
DISTILL = ["train.epochs=1", "train.batch_size=8", "train.progress=false", "distill.options.crd.num_negatives=16"]
FULL = "cannot write it: no space left on the device"
HDF5_FULL = ("Unable to synchronously flush file (file write failed: time = Sun Dec  6 00:43:16 2026\n, filename = "
             "'{}', file descriptor = 4, errno = 28, error message = 'No space left on device', buf = 0x55, total "
             "write size = 445, bytes this sub-write = 445, offset = 5238784)")


@pytest.fixture
def disk(tmp_path):
    """A 16 MiB tmpfs; :func:`leave_free` fills it."""
    folder = mounted_tmpfs(tmp_path / "disk", "size=16m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def leave_free(disk: Path, kib: int) -> None:
    """Fill ``disk`` with a filler file until ``kib`` KiB are left."""
    stats = os.statvfs(disk)
    with open(disk / "filler", "wb") as handle:
        handle.write(bytes(stats.f_bavail * stats.f_frsize - kib * 1024))


def temporaries(folder: Path) -> list[str]:
    """Hidden files (the writers' ``.NAME.tmp-PID``, locks) anywhere under ``folder``."""
    return sorted(str(path) for path in folder.rglob(".*"))


def refused(result: subprocess.CompletedProcess, verb: str, path: Path | str) -> None:
    assert error_line(result) == f"crossmodal {verb}: error: {path}: {FULL}", result.stderr
    assert result.returncode == 2 and "Exception ignored" not in result.stderr


# ------------------------------------------------------------------------------------- inputs of prepare
def noise(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)  # incompressible: every row costs its size


def image_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("ant", "cat"):
            (root / split / label).mkdir(parents=True)
            for n in range(6):
                cv2.imwrite(str(root / split / label / f"{n}.png"), noise(rng, 32, 32, 3))
    return root


def pairs_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir()
    for n in range(12):
        cv2.imwrite(str(root / f"{n:04d}_rgb.png"), noise(rng, 32, 32, 3))
        cv2.imwrite(str(root / f"{n:04d}_depth.png"), (noise(rng, 32, 32).astype(np.uint16) * 20 + 500))
    return root


def stl10_release(root: Path) -> Path:
    rng = np.random.default_rng(2)
    root.mkdir()
    for split, count in (("train", 4), ("test", 3), ("unlabeled", 2)):
        noise(rng, count, 3, 96, 96).tofile(root / f"{split}_X.bin")
    np.array([1, 2, 3, 4], np.uint8).tofile(root / "train_y.bin")
    np.array([1, 2, 3], np.uint8).tofile(root / "test_y.bin")
    (root / "class_names.txt").write_text("\n".join(f"c{k}" for k in range(10)) + "\n")
    return root


SOURCES = {
    "synthetic": lambda tmp, data: ["--num", 200, "--size", 32, "--workers", 1],
    "images": lambda tmp, data: ["--src", image_tree(tmp / "tree")],
    "pairs": lambda tmp, data: ["--src", pairs_folder(tmp / "pairs")],
    "stl10": lambda tmp, data: ["--src", stl10_release(tmp / "stl10")],
    "repack": lambda tmp, data: ["--src", data, "--compression", "none"],
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_prepare_on_a_full_disk(source, disk, tmp_path, synthetic_file):
    leave_free(disk, 16)
    out = disk / "out.h5"
    refused(cli("prepare", source, *SOURCES[source](tmp_path, synthetic_file), "--out", out), "prepare", out)
    assert os.listdir(disk) == ["filler"]


@pytest.mark.parametrize("source", list(SOURCES))
def test_prepare_on_a_full_disk_injected(source, tmp_path, synthetic_file, monkeypatch):
    """HDF5's flush raises RuntimeError, not OSError, for a full disk (before: a traceback)."""
    def flush(self):
        raise RuntimeError(HDF5_FULL.format(self.filename))

    monkeypatch.setattr(h5py.File, "flush", flush)
    out = tmp_path / "out" / "out.h5"
    out.parent.mkdir()
    refused(cli("prepare", source, *SOURCES[source](tmp_path, synthetic_file), "--out", out), "prepare", out)
    assert os.listdir(out.parent) == []


def test_a_disk_without_room_for_the_lock_line(disk):
    """Before: "crossmodal prepare: error: no space left on the device", naming nothing, and the empty lock file
    left behind."""
    leave_free(disk, 0)
    out = disk / "s.h5"
    result = cli("prepare", "synthetic", "--out", out, "--num", 8, "--size", 16)
    assert error_line(result) == (f"crossmodal prepare: error: {out}: cannot write its lock file "
                                  f"{disk / '.s.h5.lock'}: no space left on the device")
    assert os.listdir(disk) == ["filler"]


def test_a_disk_without_room_for_the_lock_line_injected(tmp_path, monkeypatch):
    def pwrite(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "s.h5"
    result = cli("prepare", "synthetic", "--out", out, "--num", 8, "--size", 16)
    assert error_line(result) == (f"crossmodal prepare: error: {out}: cannot write its lock file "
                                  f"{tmp_path / '.s.h5.lock'}: no space left on the device")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------- distill, probe, segment
def distill(out: Path, data: Path) -> subprocess.CompletedProcess:
    return cli("distill", SMOKE_DISTILL, "--out", out, f"data.path={data}", *DISTILL)


@pytest.fixture(scope="module")
def student(synthetic_file, tmp_path_factory):
    """A CRD student of the smoke config on the session's synthetic file (one epoch)."""
    run = tmp_path_factory.mktemp("full_disk") / "student"
    assert distill(run, synthetic_file).returncode == 0
    return run


@pytest.mark.slow
def test_distill_teacher_cache_on_a_full_disk(disk, synthetic_file):
    """The cache is the first large write. Before: "Exception ignored" from h5py's clean-up, then a crash."""
    leave_free(disk, 8)
    refused(distill(disk / "run", synthetic_file), "distill", disk / "run" / "teacher_cache.h5")
    assert os.listdir(disk) == ["filler"]  # a run stopped while being set up leaves no folder


@pytest.mark.slow
def test_distill_checkpoint_on_a_full_disk(disk, synthetic_file):
    leave_free(disk, 600)  # room for the config, the teacher cache and the metrics; not the checkpoint
    refused(distill(disk / "run", synthetic_file), "distill", disk / "run" / "checkpoint.pt")
    assert temporaries(disk) == [] and not (disk / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_distill_teacher_cache_on_a_full_disk_injected(tmp_path, synthetic_file, monkeypatch):
    """What h5py raises when a chunk cannot be written, in the cache's writing loop."""
    real = h5py.Dataset.__setitem__

    def write(self, key, value):
        if "teacher_cache" in self.file.filename:
            raise OSError(f"Can't synchronously write data (file write failed: filename = '{self.file.filename}', "
                          f"errno = 28, error message = 'No space left on device')")
        real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", write)
    refused(distill(tmp_path / "run", synthetic_file), "distill", tmp_path / "run" / "teacher_cache.h5")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_distill_checkpoint_on_a_full_disk_injected(tmp_path, synthetic_file, monkeypatch):
    """torch's zip writer names no reason ("unexpected pos"): a folder with less than 1 MiB free is full."""
    def save(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    real_statvfs = os.statvfs

    def statvfs(path):
        stats = real_statvfs(path)
        return os.statvfs_result((stats.f_bsize, stats.f_frsize, stats.f_blocks, 0, 0, *stats[5:]))

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", statvfs)
    refused(distill(tmp_path / "run", synthetic_file), "distill", tmp_path / "run" / "checkpoint.pt")
    assert temporaries(tmp_path / "run") == []


@pytest.mark.slow
def test_a_teacher_folder_on_a_full_disk(disk, student):
    """The folder is filled under a temporary name: the line names the folder asked for."""
    from crossmodal.errors import DataError
    from crossmodal.train.import_teacher import initialised_folder

    leave_free(disk, 16)
    with pytest.raises(DataError) as error:
        initialised_folder(str(disk / "init"), str(student / "student.safetensors"), "depth")
    assert str(error.value) == f"{disk / 'init'}: {FULL}" and os.listdir(disk) == ["filler"]


@pytest.mark.slow
def test_a_teacher_folder_on_a_full_disk_injected(tmp_path, student, monkeypatch):
    """The model card, written after the weights, is refused: before, the line named the temporary folder."""
    from crossmodal.errors import DataError
    from crossmodal.train.import_teacher import initialised_folder

    def dump(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", dump)
    out = tmp_path / "folder" / "init"
    with pytest.raises(DataError) as error:
        initialised_folder(str(out), str(student / "student.safetensors"), "depth")
    assert str(error.value) == f"{out}: {FULL}" and os.listdir(out.parent) == []


def probe(student: Path, data: Path, *options) -> subprocess.CompletedProcess:
    return cli("probe", "--checkpoint", student, "--data", data, "--no-progress", "--stages", -1, *options)


@pytest.mark.slow
def test_probe_feature_cache_on_a_full_disk(disk, student, synthetic_file):
    leave_free(disk, 16)
    cache = disk / "cache"
    result = probe(student, synthetic_file, "--feature-cache", cache)
    refused(result, "probe", cache / "features-train-depth-label-avg.safetensors")
    assert temporaries(disk) == [] and os.listdir(cache) == []


@pytest.mark.slow
def test_probe_feature_cache_on_a_full_disk_injected(tmp_path, student, synthetic_file, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = tmp_path / "cache"
    result = probe(student, synthetic_file, "--feature-cache", cache)
    refused(result, "probe", cache / "features-train-depth-label-avg.safetensors")
    assert os.listdir(cache) == []


def table_rows(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if re.match(r"\s*(\d|embedding)", line)]


@pytest.mark.slow
def test_probe_json_on_a_full_disk_keeps_the_table(disk, student, synthetic_file):
    """Before: the whole table was lost when the final --json write failed (the check before starting only
    tests the folder). The table now reaches stdout first."""
    leave_free(disk, 0)
    result = probe(student, synthetic_file, "--json", disk / "p.json")
    refused(result, "probe", disk / "p.json")
    assert table_rows(result.stdout) == ["4", "embedding"] and "written to" not in result.stdout
    assert os.listdir(disk) == ["filler"]


@pytest.mark.slow
def test_probe_json_on_a_full_disk_injected(tmp_path, student, synthetic_file, monkeypatch):
    real = json.dump

    def dump(value, handle, **kwargs):
        if ".p.json.tmp-" in handle.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(value, handle, **kwargs)

    monkeypatch.setattr(json, "dump", dump)
    result = probe(student, synthetic_file, "--json", tmp_path / "p.json")
    refused(result, "probe", tmp_path / "p.json")
    assert table_rows(result.stdout) == ["4", "embedding"] and os.listdir(tmp_path) == []


def segment(student: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    return cli("segment", "--checkpoint", student, "--data", data, "--labels", "seg", "--epochs", 1,
               "--protocol", "frozen", "--batch-size", 8, "--out", out)


@pytest.mark.slow
def test_segment_on_a_full_disk(disk, student, synthetic_file):
    leave_free(disk, 64)  # the config and the metrics fit; the checkpoint does not
    refused(segment(student, synthetic_file, disk / "seg"), "segment", disk / "seg" / "frozen" / "checkpoint.pt")
    assert temporaries(disk) == []


@pytest.mark.slow
def test_segment_on_a_full_disk_injected(tmp_path, student, synthetic_file, monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, target, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(Figure, "savefig", savefig)
    result = segment(student, synthetic_file, tmp_path / "seg")
    refused(result, "segment", tmp_path / "seg" / "frozen" / "curves.png")
    assert temporaries(tmp_path / "seg") == []


# ------------------------------------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def probe_json(student, synthetic_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    result = probe(student, synthetic_file, "--json", path)
    assert result.returncode == 0, result.stderr
    return path


@pytest.mark.slow
def test_report_on_a_full_disk(disk, probe_json):
    leave_free(disk, 8)  # report.json and report.md fit, the first plot does not
    result = cli("report", probe_json, "--out", disk / "report")
    assert re.fullmatch(rf"crossmodal report: error: {disk}/report/probe_\w+\.png: {FULL}", error_line(result))
    assert result.returncode == 2 and temporaries(disk) == []


@pytest.mark.slow
def test_report_on_a_full_disk_injected(tmp_path, probe_json, monkeypatch):
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.startswith(".report.md.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    refused(cli("report", probe_json, "--out", tmp_path / "report"), "report", tmp_path / "report" / "report.md")
    assert temporaries(tmp_path / "report") == []


# ------------------------------------------------------------------------------------- a read-only place
@pytest.mark.slow
def test_a_read_only_place_is_said_to_be_read_only(read_only_disk, student, synthetic_file):
    """Before: probe checked the folder with os.access, and said "permission denied" for a read-only disk."""
    result = probe(student, synthetic_file, "--json", read_only_disk / "p.json")
    assert error_line(result) == (f"crossmodal probe: error: {read_only_disk}: cannot write in this folder: the "
                                  f"file system is read-only")
    result = cli("inspect", synthetic_file, "--preview", read_only_disk / "p.png")
    assert error_line(result) == f"crossmodal inspect: error: {read_only_disk / 'p.png'}: cannot write it: the " \
                                 f"file system is read-only"


@pytest.mark.slow
def test_segment_refuses_a_read_only_json_folder_before_training(read_only_disk, student, synthetic_file,
                                                                  tmp_path):
    """Before: the folder was only created if missing, and the copy failed after the training."""
    result = cli("segment", "--checkpoint", student, "--data", synthetic_file, "--labels", "seg", "--epochs", 1,
                 "--json", read_only_disk / "s.json", "--out", tmp_path / "seg")
    assert error_line(result) == (f"crossmodal segment: error: {read_only_disk}: cannot write in this folder: the "
                                  f"file system is read-only")
    assert not (tmp_path / "seg").exists()


def test_a_read_only_place_is_said_to_be_read_only_injected(tmp_path, synthetic_file, monkeypatch):
    import tempfile

    from crossmodal.errors import DataError
    from crossmodal.files import writable_folder

    def refused_(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refused_)
    with pytest.raises(DataError) as error:
        writable_folder(tmp_path)
    assert str(error.value) == f"{tmp_path}: cannot write in this folder: the file system is read-only"
    real_open = open

    def open_(file, *args, **kwargs):
        if ".p.png.tmp-" in str(file):
            refused_()
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_)
    result = cli("inspect", synthetic_file, "--preview", tmp_path / "p.png")
    assert error_line(result) == f"crossmodal inspect: error: {tmp_path / 'p.png'}: cannot write it: the file " \
                                 f"system is read-only"
