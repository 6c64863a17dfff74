"""Shared fixtures: paths to the real data in ../shared, a small synthetic file, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# One OpenMP thread for the whole session, set before torch is first imported: the training tests compare runs
# in this process with runs in fresh ones bit for bit, which holds only when both start with equal thread pools
# (torch.set_num_threads(1) after a 2-thread start is not the same numerics). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def run_cli(*args: str, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``crossmodal ARGS`` as a user would, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-m", "crossmodal", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd or ROOT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"crossmodal {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def cli(*args) -> subprocess.CompletedProcess:
    """``crossmodal ARGS`` through the entry point in this process (the tests' cost is the work, not imports)."""
    import contextlib
    import io

    from crossmodal.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code
    return subprocess.CompletedProcess(["crossmodal", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single error line a failed command printed last; fails the test on a traceback or several errors.

    Progress bars and informative lines printed before the failure may precede it.
    """
    assert result.returncode != 0, "the command should have failed"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    return errors[0]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read the real data in ../shared beside the project")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_file(tmp_path_factory) -> Path:
    """A small synthetic RGB-D file (48 scenes, 32 x 32), made once per test session."""
    from crossmodal.data.synthetic import generate

    path = tmp_path_factory.mktemp("synthetic") / "scenes.h5"
    generate(str(path), num=48, size=32, seed=1, workers=1)
    return path
