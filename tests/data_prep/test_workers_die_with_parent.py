"""Worker processes end with their parent, even one killed by SIGKILL, which it cannot handle (issue 27: before,
the two workers of ``prepare synthetic --workers 2`` rendered on as orphans for more than a minute)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


def stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it; it runs nothing)."""
    found = stat(pid)
    return found is not None and found[0] != "Z"


def workers_of(parent: int) -> list[int]:
    """The multiprocessing workers (``spawn_main``) whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat(int(entry.name)) or ("", 0))[1] == parent:
            try:
                if b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigkill_of_prepare_leaves_no_worker_running(tmp_path):
    parent = subprocess.Popen([sys.executable, "-m", "crossmodal.cli.main", "prepare", "synthetic", "--out",
                               str(tmp_path / "big.h5"), "--num", "20000", "--size", "64", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    try:
        assert wait_until(lambda: len(workers_of(parent.pid)) == 2, 60), "the two workers never started"
        workers = workers_of(parent.pid)
        time.sleep(2)  # their imports done: they render
        assert all(running(pid) for pid in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert wait_until(lambda: not any(running(pid) for pid in workers), 5), \
        f"workers {[pid for pid in workers if running(pid)]} outlived their parent"


def test_without_the_kernel_signal_a_worker_notices_its_parent_gone(tmp_path):
    """The portable fallback (no prctl): a thread of the worker looks for its parent and exits."""
    script = textwrap.dedent("""
        import os, sys, time
        from crossmodal import interrupts
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            interrupts.die_with_parent(parent, kernel=False)
            time.sleep(60)  # busy, as a worker rendering a chunk is
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        child = int(parent.stdout.readline())
        assert running(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    assert wait_until(lambda: not running(child), 5), "the child outlived its parent"
