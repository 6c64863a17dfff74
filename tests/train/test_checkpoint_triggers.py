"""When checkpoints are written beyond the epoch's end: SIGUSR1 after the current step (in one process, and sent
to one rank of two under torchrun), and never over the last good checkpoint once the run has diverged."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _run_helpers import (ENGINE_SMALL, ENGINE_STEPS_PER_EPOCH, ROOT, SMOKE_TEACHER, load_checkpoint,
                          run_in_process, subprocess_env, teacher_overrides)

from crossmodal.engine import TrainingDiverged

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STEPS_PER_EPOCH = ENGINE_STEPS_PER_EPOCH
SMALL = ENGINE_SMALL


def test_sigusr1_checkpoints_after_the_current_step(synthetic_file, tmp_path):
    """SIGUSR1 asks for a checkpoint "after the current step": sent after step 2's checkpoint check, it is
    served by step 3, mid-epoch; then the request is spent (no more mid-epoch saves)."""
    run = tmp_path / "run"
    seen: dict[int, tuple] = {}

    def on_step(trainer) -> None:
        path = run / "checkpoint.pt"
        if trainer.step == 2:
            assert not path.exists()  # no checkpoint_every_steps, first epoch: nothing saved yet
            os.kill(os.getpid(), signal.SIGUSR1)
        if trainer.step in (3, STEPS_PER_EPOCH + 2):
            checkpoint = load_checkpoint(run)
            seen[trainer.step] = (checkpoint["step"], checkpoint["epoch"], checkpoint["batch_in_epoch"])

    def sentinel(signum, frame) -> None:
        raise AssertionError("the trainer's handler should have been in place")

    previous = signal.signal(signal.SIGUSR1, sentinel)
    try:
        run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file, "train.epochs=2"), run,
                       hooks=[on_step])
        assert signal.getsignal(signal.SIGUSR1) is sentinel  # the caller's handler is back
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert seen[3] == (3, 0, 3)  # the requested mid-epoch checkpoint
    assert seen[STEPS_PER_EPOCH + 2] == (STEPS_PER_EPOCH, 1, 0)  # the epoch's own; the request did not linger
    assert load_checkpoint(run)["step"] == 2 * STEPS_PER_EPOCH


def test_divergence_between_records_keeps_the_last_good_checkpoint(synthetic_file, tmp_path):
    """A checkpoint due after the weights went NaN, before the next record would notice: the run stops with
    TrainingDiverged instead of overwriting the good checkpoint of step 2 with NaN weights."""
    run = tmp_path / "run"

    def poison(trainer) -> None:
        if trainer.step == 2:
            with torch.no_grad():
                trainer.parameters[0].fill_(float("nan"))
            trainer.request_checkpoint()  # as SIGUSR1 would

    with pytest.raises(TrainingDiverged, match="step 3: some weights became NaN or infinite"):
        run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
            synthetic_file, "train.log_every=10", "train.checkpoint_every_steps=2"), run, hooks=[poison])
    checkpoint = load_checkpoint(run)
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


SIGNAL_WORKER = """
import json, os, signal, sys
import torch
from crossmodal.train.run import run_training

config, out, report, *overrides = sys.argv[1:]
rank = int(os.environ["RANK"])

def hook(trainer):
    if rank == 1 and trainer.step == 1:
        os.kill(os.getpid(), signal.SIGUSR1)  # rank 1 only
    if rank == 0 and trainer.step == 2:
        checkpoint = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
        with open(report, "w") as handle:
            json.dump([checkpoint["step"], checkpoint["epoch"], checkpoint["batch_in_epoch"]], handle)

run_training("train-teacher", config, overrides, out=out, hooks=[hook])
"""


def test_sigusr1_to_one_rank_checkpoints_on_all(synthetic_file, tmp_path):
    """Under torchrun the signal may reach one worker only (torchrun does not forward it): the ranks agree on
    the checkpoint at the next logging step, rank 0 writes it, and the divergence check before saving runs on
    every rank (no hang)."""
    worker, report = tmp_path / "worker.py", tmp_path / "report.json"
    worker.write_text(SIGNAL_WORKER)
    launcher = Path(sys.executable).with_name("torchrun")
    command = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # 38 scenes over 2 ranks (19 each, padded), batch 4 per rank: 4 steps
    overrides = teacher_overrides(synthetic_file, "train.batch_size=4", "train.log_every=2")
    result = subprocess.run([*command, "--nproc_per_node=2", f"--master_port={port}", worker, SMOKE_TEACHER,
                             tmp_path / "run", report, *overrides], capture_output=True, text=True,
                            env=subprocess_env(), cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(report.read_text()) == [2, 0, 2]  # signalled after step 1, agreed and served at step 2
    assert load_checkpoint(tmp_path / "run")["step"] == 4
