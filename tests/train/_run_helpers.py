"""Helpers of the end-to-end training tests (not collected: the name starts with an underscore)."""
from __future__ import annotations

import contextlib
import csv
import json
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "experiments" / "configs"
SMOKE_DISTILL = CONFIGS / "smoke_distill.yaml"
SMOKE_TEACHER = CONFIGS / "smoke_teacher.yaml"
WORKER = Path(__file__).resolve().parent / "_train_worker.py"


def subprocess_env() -> dict[str, str]:
    """The environment of every process the tests start: one thread each (2 cores, tests run side by side)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def cli_in_process(*args: Any) -> subprocess.CompletedProcess:
    """``crossmodal ARGS`` through :func:`crossmodal.cli.main.main` in this process, as a CompletedProcess.

    For the commands that must fail before training: the same code as the console script, without paying for
    a fresh interpreter's imports each time. A traceback would propagate and fail the test.
    """
    from crossmodal.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), one_thread():
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["crossmodal", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread here, as the subprocesses do, so that in- and out-of-process runs agree bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_in_process(verb: str, config: Path, overrides: Sequence[str], out: Path, hooks=()) -> dict[str, Any]:
    """One training run in this process; returns the last epoch's record."""
    from crossmodal.train.run import run_training

    with one_thread():
        _, record = run_training(verb, str(config), list(overrides), out=str(out), hooks=list(hooks))
    return record


def start_worker(*args: Any) -> subprocess.Popen:
    """``python _train_worker.py ARGS`` in a fresh interpreter, started; ``.communicate()`` waits for it."""
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=ROOT)


def wait(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_same_tensors(expected: Any, got: Any, where: str = "") -> int:
    """Nested dicts / lists of tensors and plain values equal bit for bit; returns the number of tensors."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert expected.dtype == got.dtype and expected.shape == got.shape, where
        assert torch.equal(expected, got), f"{where} differs"
        return 1
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(expected) == list(got), f"{where}: keys differ"
        return sum(assert_same_tensors(expected[key], got[key], f"{where}.{key}") for key in expected)
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(expected) == len(got), where
        return sum(assert_same_tensors(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(expected, got)))
    assert expected == got, f"{where}: {expected!r} != {got!r}"
    return 0


def load_exported(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# the engine tests' tiny runs: batch 8 over the session file's 38 training scenes = 4 steps an epoch
ENGINE_SMALL = ["train.batch_size=8", "train.progress=false"]
ENGINE_STEPS_PER_EPOCH = 4


def teacher_overrides(data: Path, *extra: str) -> list[str]:
    """A classes-only teacher (no decoder: the cheapest task), unaugmented, one record per step."""
    return [f"data.path={data}", *ENGINE_SMALL, "train.epochs=1", "train.log_every=1", "task.segmentation=null",
            "data.augment=false", *extra]


def records(run: Path, scope: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["scope"] == scope]


def first_call(action):
    """A hook that runs ``action(trainer)`` after the first step only."""
    done = []

    def hook(trainer) -> None:
        if not done:
            done.append(True)
            action(trainer)
    return hook
