"""TensorBoard events of the training verbs as a user meets them: on by default, under the names and steps of
metrics.jsonl, the config in the hparams view; off by a config key; one line without the package; and the
one-line refusals of a bad event folder (another run's, an unwritable one, a disk that fills while writing).
The kill-and-resume check is in test_resume.py, rank 0 alone under torchrun in test_train_distributed.py, the
segmentation pictures in tests/eval/test_segment_cli.py, `make demo`'s in tests/cli/test_demo.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _run_helpers import (SMOKE_TEACHER, cli_in_process, load_checkpoint, one_thread, subprocess_env,
                          teacher_overrides)
from conftest import ROOT, error_line, mounted_tmpfs, needs_package
from tb_events import assert_events_match_metrics, hparams, images

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

TEACHER = ["train.epochs=2", "train.log_every=2"]  # 4 steps an epoch: records at steps 2, 4, 6, 8


@pytest.fixture(scope="module")
def teacher(synthetic_file, tmp_path_factory) -> tuple[Path, str]:
    needs_package("tensorboard", "tensorboard")
    run = tmp_path_factory.mktemp("tb") / "teacher"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run, *teacher_overrides(synthetic_file, *TEACHER))
    assert result.returncode == 0, result.stderr
    return run, result.stdout


def test_every_record_is_an_event_and_the_config_is_in_the_hparams_view(teacher):
    run, stdout = teacher
    got = assert_events_match_metrics(run)
    assert {"loss", "lr", "ce", "train_loss", "eval_top1", "epoch"} <= set(got)
    assert [step for step, _ in got["eval_top1"]] == [4, 8] and [step for step, _ in got["loss"]] == [2, 4, 6, 8]
    config = hparams(run / "tb")
    assert config["verb"] == "train-teacher" and config["optim.lr"] == 0.05 and config["train.epochs"] == 2
    assert config["task.classes"] == "label" and config["train.tensorboard"] is True
    assert [step for step, *_ in images(run / "tb")["curves"]] == [8]
    assert "TensorBoard" not in stdout  # nothing said when events are on


def test_a_config_key_turns_them_off(synthetic_file, tmp_path):
    run = tmp_path / "off"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run,
                            *teacher_overrides(synthetic_file, "train.tensorboard=false"))
    assert result.returncode == 0, result.stderr
    assert not (run / "tb").exists() and "TensorBoard" not in result.stdout + result.stderr


def test_without_the_package_one_line_says_so_and_training_runs(synthetic_file, tmp_path):
    run = tmp_path / "without"
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from crossmodal.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "train-teacher", str(SMOKE_TEACHER), "--out", str(run),
                             *teacher_overrides(synthetic_file)], capture_output=True, text=True, cwd=ROOT,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "TensorBoard" in line]
    assert notes == ["note: TensorBoard events are off: the tensorboard package is not installed (pip install "
                     "'crossmodal[tensorboard]'); train.tensorboard=false silences this"]
    assert result.stdout.index(notes[0]) < result.stdout.index("epoch 1/1")  # at the start
    assert not (run / "tb").exists() and (run / "model_card.json").is_file()


def test_a_logdir_of_its_own_holds_its_events(teacher, synthetic_file, tmp_path):
    run, logdir = tmp_path / "run", tmp_path / "board" / "teacher"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run,
                            *teacher_overrides(synthetic_file, f"train.logdir={logdir}"))
    assert result.returncode == 0, result.stderr
    assert not (run / "tb").exists()
    assert_events_match_metrics(run, logdir)
    assert (logdir / "crossmodal-run.txt").read_text() == f"{run}\n"


def test_a_logdir_of_another_run_is_one_line_before_training(teacher, synthetic_file, tmp_path):
    other, _ = teacher
    run = tmp_path / "second"
    before = sorted(os.listdir(other / "tb"))
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run,
                            *teacher_overrides(synthetic_file, f"train.logdir={other / 'tb'}"))
    assert error_line(result) == (
        f"crossmodal train-teacher: error: train.logdir: {other / 'tb'} holds event files of another run "
        f"(events.out.tfevents.crossmodal); give this run a folder of its own (or none: its events go to RUN_DIR/tb)")
    assert result.returncode == 2 and not (run / "checkpoint.pt").exists()
    assert sorted(os.listdir(other / "tb")) == before


def test_an_unwritable_logdir_is_one_line_before_training(synthetic_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = tmp_path / "run"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run,
                            *teacher_overrides(synthetic_file, f"train.logdir={blocker / 'tb'}"))
    assert error_line(result).startswith(f"crossmodal train-teacher: error: {blocker / 'tb'}: cannot create this "
                                         f"folder: ")
    assert result.returncode == 2 and not (run / "checkpoint.pt").exists()


def test_a_disk_that_fills_while_writing_events_stops_with_one_line_and_keeps_the_checkpoint(
        teacher, synthetic_file, tmp_path):
    """The events on a 1 MiB tmpfs with 24 KiB left: the scalars fit, the curves picture at the end does not. The
    run stops as a full disk stops it for its other outputs: one line naming the event file, exit 2, the last
    checkpoint whole; freed, `--resume` finishes the run and its events are one curve."""
    disk = mounted_tmpfs(tmp_path / "disk", "size=1m")
    try:
        stats = os.statvfs(disk)
        (disk / "filler").write_bytes(bytes(stats.f_bavail * stats.f_frsize - 24 * 1024))
        run, logdir = tmp_path / "run", disk / "tb"
        result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run,
                                *teacher_overrides(synthetic_file, *TEACHER, f"train.logdir={logdir}"))
        assert error_line(result) == (f"crossmodal train-teacher: error: {logdir / 'events.out.tfevents.crossmodal'}"
                                      f": cannot write it: no space left on the device")
        assert result.returncode == 2 and "Exception ignored" not in result.stderr
        with one_thread():
            assert load_checkpoint(run)["step"] == 8  # the last epoch's checkpoint, whole
        assert not (run / "model_card.json").exists()
        (disk / "filler").unlink()
        resumed = cli_in_process("train-teacher", "--resume", run)
        assert resumed.returncode == 0, resumed.stderr
        assert_events_match_metrics(run, logdir)
        assert [step for step, *_ in images(logdir)["curves"]] == [8]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
