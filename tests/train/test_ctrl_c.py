"""Ctrl-C in a terminal during ``crossmodal distill``: SIGINT to the whole process group (the CLI and its data
loader workers). Before issue 27 it saved no checkpoint and printed no ``--resume`` hint, where SIGTERM did both;
now the step finishes, a checkpoint is saved at it, the hint is printed and the exit status is 130."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from _run_helpers import SMOKE_DISTILL, load_checkpoint, subprocess_env

from crossmodal import interrupts


@pytest.fixture(autouse=True)
def _fresh():
    interrupts.reset()
    yield
    interrupts.reset()


def test_a_first_ctrl_c_is_deferred_in_training_and_a_second_stops_at_once(capsys):
    with interrupts.deferred_termination():
        interrupts._interrupt_handler(signal.SIGINT, None)  # returns: the step goes on
        assert interrupts.termination_pending()
        assert "Ctrl-C again stops at once" in capsys.readouterr().err
        stopped = interrupts.stopped("after saving a checkpoint at step 3")
        assert type(stopped) is interrupts.Interrupted and str(stopped) == (
            "interrupted (Ctrl-C) after saving a checkpoint at step 3")
        with pytest.raises(KeyboardInterrupt):
            interrupts._interrupt_handler(signal.SIGINT, None)


def test_sigterm_stays_sigterm_when_deferred():
    with interrupts.deferred_termination():
        interrupts._terminate_handler(signal.SIGTERM, None)
        assert type(interrupts.stopped("after x")) is interrupts.Terminated
    with pytest.raises(KeyboardInterrupt):  # outside training, Ctrl-C raises at once, as before
        interrupts._interrupt_handler(signal.SIGINT, None)


@pytest.mark.slow  # end to end: trains in a fresh interpreter
def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_hint(synthetic_file, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "crossmodal.cli.main", "distill", str(SMOKE_DISTILL), "--out", str(run),
               f"data.path={synthetic_file}", "data.num_workers=2", "train.epochs=50", "train.batch_size=8",
               "train.log_every=1", "train.progress=false", "distill.options.crd.num_negatives=16"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(), start_new_session=True)  # its own group, as a terminal's job
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the CLI and its loader workers get it
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.rstrip().splitlines()[-1]
    match = re.fullmatch(rf"crossmodal distill: interrupted \(Ctrl-C\) after saving a checkpoint at step (\d+) "
                         rf"\(epoch \d+, batch \d+\); --resume {re.escape(str(run))} continues from it", last)
    assert match, stderr
    assert load_checkpoint(run)["step"] == int(match.group(1)) >= 2
    assert not [name for name in os.listdir(run) if ".tmp" in name]
