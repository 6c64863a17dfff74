"""Faults of the place and of the process, as a user or a scheduler meets them through the CLI: a full disk, a
read-only folder, SIGTERM and Ctrl-C mid-conversion, stale temporary files, two processes on one output or run,
and the messages of ``--resume``. Each must give one line, the right exit code, no traceback and no leftover.

Real file systems are used where this machine allows (a small or read-only tmpfs needs root and ``mount``);
elsewhere those tests skip with the reason, and the same faults are injected at the writer, which always runs.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from conftest import ROOT, cli, error_line, mounted_tmpfs

SMOKE_TEACHER = ROOT / "experiments" / "configs" / "smoke_teacher.yaml"
TEACHER = ["train.batch_size=8", "train.epochs=1", "train.progress=false", "task.segmentation=null",
           "data.augment=false"]


@pytest.fixture
def small_disk(tmp_path):
    disk = mounted_tmpfs(tmp_path / "small", "size=4m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    disk = mounted_tmpfs(tmp_path / "readonly", "size=1m,ro")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


# ------------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_stops_prepare_with_one_line_and_frees_it(small_disk):
    """Before: hundreds of "Exception ignored" tracebacks, a segfault (exit 139), the temporary file left."""
    result = cli("prepare", "synthetic", "--out", small_disk / "big.h5", "--num", 2000, "--size", 32, "--workers", 1)
    assert error_line(result) == f"crossmodal prepare: error: {small_disk / 'big.h5'}: cannot write it: no space " \
                                 f"left on the device"
    assert result.returncode == 2 and "Exception ignored" not in result.stderr
    assert os.listdir(small_disk) == []  # the temporary file is gone: the disk is free again


def test_a_full_disk_injected_at_the_hdf5_writer(tmp_path, monkeypatch):
    """The same fault wherever no small disk can be mounted: HDF5's flush reports ENOSPC on the third batch."""
    real_flush, calls = h5py.File.flush, []

    def flush(self):
        calls.append(1)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "Driver write request failed (file write failed: errno = 28, error "
                                        "message = 'No space left on device')")
        real_flush(self)

    monkeypatch.setattr(h5py.File, "flush", flush)
    result = cli("prepare", "synthetic", "--out", tmp_path / "big.h5", "--num", 600, "--size", 16, "--workers", 1)
    assert error_line(result).endswith(f"{tmp_path / 'big.h5'}: cannot write it: no space left on the device")
    assert result.returncode == 2 and os.listdir(tmp_path) == []


def test_a_full_disk_while_checkpointing_is_one_line(synthetic_file, tmp_path, monkeypatch):
    """Before: a traceback from the checkpoint writer. torch reports a short write as a RuntimeError."""
    def full(obj, target, *args, **kwargs):
        Path(target).write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    result = cli("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", *TEACHER)
    assert error_line(result) == (f"crossmodal train-teacher: error: {run / 'checkpoint.pt'}: cannot write it: no "
                                  f"space left on the device")
    assert result.returncode == 2 and not [name for name in os.listdir(run) if ".tmp-" in name]


# ------------------------------------------------------------------------------------ a read-only folder
def test_a_read_only_place_is_one_line_for_prepare_and_training(read_only_disk, synthetic_file):
    """Before: a Python traceback (os.makedirs of the run folder; the HDF5 temporary file)."""
    result = cli("prepare", "synthetic", "--out", read_only_disk / "x.h5", "--num", 8, "--size", 16)
    assert error_line(result).endswith("the file system is read-only") and result.returncode == 2
    result = cli("train-teacher", SMOKE_TEACHER, "--out", read_only_disk / "run", f"data.path={synthetic_file}",
                 *TEACHER)
    assert error_line(result) == (f"crossmodal train-teacher: error: {read_only_disk / 'run'}: cannot create the run "
                                  f"folder: the file system is read-only")


def test_a_read_only_place_injected(tmp_path, synthetic_file, monkeypatch):
    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))

    monkeypatch.setattr(os, "makedirs", refused)
    monkeypatch.setattr(os, "mkdir", refused)
    result = cli("train-teacher", SMOKE_TEACHER, "--out", tmp_path / "a" / "run", f"data.path={synthetic_file}",
                 *TEACHER)
    assert error_line(result).endswith("cannot create the run folder: the file system is read-only")
    monkeypatch.undo()
    monkeypatch.setattr(h5py, "File", refused)
    result = cli("prepare", "synthetic", "--out", tmp_path / "x.h5", "--num", 8, "--size", 16)
    assert error_line(result).endswith(": the file system is read-only") and result.returncode == 2
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- signals mid-conversion
def interrupted_prepare(tmp_path: Path, sig: int) -> subprocess.CompletedProcess:
    """``crossmodal prepare synthetic`` in its own process group, sent ``sig`` (to the group, as a terminal's
    Ctrl-C or a scheduler does) once its temporary file exists."""
    out = tmp_path / "scenes.h5"
    process = subprocess.Popen([sys.executable, "-m", "crossmodal", "prepare", "synthetic", "--out", str(out),
                                "--num", "20000", "--size", "64", "--workers", "2"], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    deadline = time.monotonic() + 60
    while not [name for name in os.listdir(tmp_path) if ".tmp-" in name] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.1)  # the generator's worker processes may still be starting: they must stay quiet too
    os.killpg(process.pid, sig)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("sig, code, line", [(signal.SIGTERM, 143, "crossmodal prepare: terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "crossmodal prepare: interrupted")],
                         ids=["sigterm", "ctrl-c"])
def test_a_signal_mid_conversion_is_one_line_and_leaves_nothing(tmp_path, sig, code, line):
    """Before: SIGTERM left the temporary file; Ctrl-C printed "Exception ignored ... KeyboardInterrupt"."""
    result = interrupted_prepare(tmp_path, sig)
    assert result.returncode == code, result.stderr
    lines = [text for text in result.stderr.replace("\r", "\n").splitlines()
             if text.strip() and not text.startswith("synthetic:")]
    assert lines == [line], result.stderr
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------- stale temporary files
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_run_removes_temporary_files_of_dead_writers(tmp_path):
    stale = tmp_path / f".scenes.h5.tmp-{dead_pid()}"
    stale.write_bytes(b"half a file")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f".scenes.h5.tmp-{live.pid}"  # a writer still at work: its file stays
        running.write_bytes(b"being written")
        result = cli("prepare", "synthetic", "--out", tmp_path / "scenes.h5", "--num", 8, "--size", 16)
    finally:
        live.kill()
        live.wait()
    assert result.returncode == 0, result.stderr
    assert f"removed {stale}: a temporary file left by process" in result.stderr
    assert not stale.exists() and leftovers(tmp_path) == [running.name]


# ----------------------------------------------------------------------------------- two processes at once
def test_a_second_writer_of_the_same_output_is_refused_naming_the_first(tmp_path):
    from crossmodal.files import exclusive_lock

    out = tmp_path / "scenes.h5"
    with exclusive_lock(tmp_path / ".scenes.h5.lock", out, "crossmodal prepare"):
        result = cli("prepare", "synthetic", "--out", out, "--num", 8, "--size", 16)
    assert f"{out}: is in use by process {os.getpid()} on " in error_line(result)
    assert result.returncode == 2 and not out.exists() and leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def teacher_run(synthetic_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    result = cli("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", *TEACHER)
    assert result.returncode == 0, result.stderr
    return run


def test_a_second_resume_of_a_running_run_is_refused(teacher_run):
    """Before: both resumes 'succeeded' and interleaved their metrics (29 records instead of 18)."""
    from crossmodal import run_folder

    records = (teacher_run / "metrics.jsonl").read_text()
    with run_folder.lock(str(teacher_run), "distill"):
        result = cli("train-teacher", "--resume", teacher_run)
    assert f"{teacher_run}: is in use by process {os.getpid()} on " in error_line(result)
    assert result.returncode == 2 and (teacher_run / "metrics.jsonl").read_text() == records


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_line(teacher_run):
    (teacher_run / ".lock").write_text(f"process {dead_pid()} on elsewhere (crossmodal train-teacher, since then)")
    result = cli("train-teacher", "--resume", teacher_run)
    assert result.returncode == 0, result.stderr
    assert f"{teacher_run}: took over the lock of process" in result.stderr and not (teacher_run / ".lock").exists()


# ------------------------------------------------------------------------------------------ --resume says
def test_resume_without_a_checkpoint_says_it_starts_over(teacher_run, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(teacher_run / "config.yaml", fresh / "config.yaml")  # killed before its first checkpoint
    result = cli("train-teacher", "--resume", fresh)
    assert result.returncode == 0, result.stderr
    assert f"{fresh}: no checkpoint yet (the run stopped before its first one); starting it from the beginning" \
        in result.stdout + result.stderr


def test_a_refused_resume_lists_every_difference(teacher_run):
    result = cli("train-teacher", "--resume", teacher_run, "optim.lr=0.5", "seed=7", "train.epochs=3")
    line = error_line(result)
    assert "(3 differences)" in line and all(key in line for key in ("optim.lr", "seed", "train.epochs"))


def test_an_export_to_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError, not an OSError."""
    from safetensors import SafetensorError

    from crossmodal.errors import DataError
    from crossmodal.models import Encoder
    from crossmodal.train import export

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "save_file", full)
    with pytest.raises(DataError) as error:
        export.export_encoder(Encoder("test_resnet", in_chans=1, small_input=True), tmp_path / "student.safetensors")
    assert str(error.value) == f"{tmp_path / 'student.safetensors'}: cannot write it: no space left on the device"
    assert os.listdir(tmp_path) == []


def test_a_busy_or_oversubscribed_machine_is_said(monkeypatch):
    from crossmodal import runtime

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    assert runtime.busy_machine_note().startswith("the machine is busy (load average 6.0 on 2 CPUs)")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert runtime.busy_machine_note() == "torch runs 8 threads on 2 CPUs; set OMP_NUM_THREADS=2 (or fewer) for " \
                                          "faster steps"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert runtime.busy_machine_note() is None


def test_benchmarks_print_the_load_average_one_way(monkeypatch):
    from crossmodal import runtime

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.891, 0.96, 1.0))
    assert runtime.load_average() == "load average 0.89 0.96 1.00 (1/5/15 min, 2 CPUs)"

    def unsupported():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unsupported)
    assert runtime.load_average() == "load average unknown"


def test_benchmarks_name_the_cpu_and_the_kernels_torch_runs(tmp_path, monkeypatch):
    from crossmodal import runtime

    cpuinfo = tmp_path / "cpuinfo"
    flags = "fpu sse2 avx avx2 fma avx512f avx512bw amx_tile amx_bf16"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: {flags}\n\n"
                               for i in range(2)))
    assert runtime.cpu_description(str(cpuinfo)) == "Intel(R) Xeon(R) Processor (AVX-512, AMX)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: sse2 avx avx2\n")
    assert runtime.cpu_description(str(cpuinfo)) == "AMD EPYC 7B13 64-Core Processor (AVX2)"
    monkeypatch.setattr(runtime.platform, "processor", lambda: "arm")
    assert runtime.cpu_description(str(tmp_path / "absent")) == "arm"
    for name in runtime.KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert runtime.kernel_description() == "torch CPU kernels AVX2"
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert runtime.kernel_description() == "torch CPU kernels AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2)"
    line = runtime.machine_description()
    assert line.startswith("CPU ") and "torch CPU kernels AVX2" in line and "load average" in line
