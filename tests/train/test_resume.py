"""Resume equivalence: a run SIGKILLed mid-epoch and resumed with ``--resume`` ends bit for bit where an
uninterrupted run of the same config ends (weights, optimizer, banks, random states, metrics); and the
one-line errors of ``--resume`` / ``--out`` misuse."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
from _run_helpers import (SMOKE_DISTILL, SMOKE_TEACHER, assert_same_tensors, cli_in_process, load_checkpoint,
                          load_exported, read_csv, run_in_process, start_worker, wait)
from conftest import error_line, needs_package, run_cli
from tb_events import TIMING, assert_events_match_metrics, hparams, images

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STEPS_PER_EPOCH = 4  # 38 training scenes of the session's synthetic file, batch 8, the last partial batch dropped
# Checkpoints every 2 steps and a record every 3: a kill at step 3 loses one step and a half-filled record
# window, which the resumed run must rebuild exactly.
COMMON = ["train.batch_size=8", "train.epochs=2", "train.progress=false", "train.log_every=3",
          "train.checkpoint_every_steps=2"]
DISTILL = ["distill.options.crd.num_negatives=16"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def logged_until(step: int) -> list[tuple[str, int]]:
    """The (scope, step) of the records an uninterrupted run has written after ``step`` steps."""
    records = []
    for done in range(1, step + 1):
        if done % 3 == 0 or done % STEPS_PER_EPOCH == 0:
            records.append(("step", done))
        if done % STEPS_PER_EPOCH == 0:
            records.append(("epoch", done))
    return records


def kill_and_resume(verb: str, config: Path, overrides: list[str], kill_at: int, tmp: Path,
                    resume_in_process: bool = False) -> tuple[Path, Path]:
    """(uninterrupted run, run killed after step ``kill_at`` and resumed by the CLI).

    The resumed run is resumed by ``crossmodal VERB --resume`` in a fresh interpreter, or, to save its start-up
    time, through the same CLI entry point in this process.
    """
    uninterrupted, resumed = tmp / "uninterrupted", tmp / "resumed"
    worker = start_worker(verb, config, *overrides, "--out", resumed, "--kill-at", kill_at)
    run_in_process(verb, config, overrides, uninterrupted)  # while the worker starts
    killed = wait(worker)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = load_checkpoint(resumed)
    last_saved = kill_at - kill_at % 2
    assert checkpoint["step"] == last_saved < kill_at  # the kill lost the steps after the last checkpoint ...
    assert checkpoint["batch_in_epoch"] == last_saved % STEPS_PER_EPOCH != 0  # ... which was mid-epoch
    assert not (resumed / "model_card.json").exists()
    # every record up to the kill, some past the checkpoint: the resumed run drops those and writes them again
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["scope"], r["step"]) for r in records] == logged_until(kill_at)

    # device may change on resume; an override after --resume goes through the CLI's `--resume RUN key=value`
    if resume_in_process:
        result = cli_in_process(verb, "--resume", resumed, "device=cpu")
        assert result.returncode == 0, result.stderr
    else:
        result = run_cli(verb, "--resume", resumed, "device=cpu", check=True)
    assert f"resumed {resumed / 'checkpoint.pt'} at epoch {last_saved // STEPS_PER_EPOCH + 1}, step {last_saved}" \
        in result.stdout
    assert f"run folder: {resumed}" in result.stdout.splitlines()
    return uninterrupted, resumed


def assert_same_run(uninterrupted: Path, resumed: Path, weights: str, device: str = "cpu") -> None:
    """Exported weights, the final checkpoint and the metric tables agree bit for bit (the resumed run's
    ``device`` aside: a resume may change it)."""
    expected_weights, expected_meta = load_exported(uninterrupted / weights)
    got_weights, got_meta = load_exported(resumed / weights)
    assert assert_same_tensors(expected_weights, got_weights) > 10 and expected_meta == got_meta

    expected, got = load_checkpoint(uninterrupted), load_checkpoint(resumed)
    assert expected["step"] == got["step"] == 2 * STEPS_PER_EPOCH and got["epoch"] == 2
    assert got["config"]["device"] == device
    got["config"]["device"] = expected["config"]["device"]
    # model (student, heads, distiller banks and sampler state), optimizer, position, random states, config
    assert assert_same_tensors(expected, got) > 50

    for table, timing in (("metrics_epochs.csv", "time_s"), ("metrics_steps.csv", "samples_per_s")):
        expected_rows, got_rows = read_csv(uninterrupted / table), read_csv(resumed / table)
        assert [row["step"] for row in got_rows] == [row["step"] for row in expected_rows]
        for row in expected_rows + got_rows:
            row.pop(timing)
        assert got_rows == expected_rows  # the loss columns (and everything else) as written, digit for digit
    assert {"train_loss", "step", "epoch"} <= set(read_csv(resumed / "metrics_epochs.csv")[0])


@pytest.fixture(scope="module")
def crd_runs(synthetic_file, tmp_path_factory) -> tuple[Path, Path]:
    """The smoke CRD distillation with a cached teacher: uninterrupted, and killed at step 3 then resumed."""
    overrides = [f"data.path={synthetic_file}", *COMMON, *DISTILL]
    return kill_and_resume("distill", SMOKE_DISTILL, overrides, 3, tmp_path_factory.mktemp("crd"))


def test_crd_distillation_resumes_bit_for_bit(crd_runs):
    uninterrupted, resumed = crd_runs
    assert_same_run(uninterrupted, resumed, "student.safetensors")
    state = load_checkpoint(resumed)["model"]
    assert {"distillers.crd.student_memory.rows", "distillers.crd.teacher_memory.rows"} <= set(state)


def test_tensorboard_events_are_one_curve_across_the_kill_and_the_resume(crd_runs):
    """Killed at step 3 after a checkpoint at step 2, resumed: the events (read by TensorBoard's own reader)
    equal metrics.jsonl at every step, once each, and the uninterrupted run's, timings aside."""
    needs_package("tensorboard", "tensorboard")
    uninterrupted, resumed = (assert_events_match_metrics(run) for run in crd_runs)
    for timing in TIMING:
        uninterrupted.pop(timing), resumed.pop(timing)
    assert resumed == uninterrupted
    assert [step for step, _ in resumed["loss"]] == [3, 4, 6, 8] and "crd/z_student" in resumed
    pictures = images(crd_runs[1] / "tb")
    assert pictures == images(crd_runs[0] / "tb") and [step for step, *_ in pictures["curves"]] == [8]
    assert hparams(crd_runs[1] / "tb")["distill.name"] == '["crd"]'


def test_uncached_augmented_distillation_resumes_bit_for_bit(synthetic_file, tmp_path):
    """The teacher runs on every (augmented) batch; killed in the second epoch."""
    overrides = [f"data.path={synthetic_file}", *COMMON, *DISTILL, "data.augment=true", "teacher.cache=false"]
    uninterrupted, resumed = kill_and_resume("distill", SMOKE_DISTILL, overrides, 7, tmp_path, resume_in_process=True)
    assert_same_run(uninterrupted, resumed, "student.safetensors")
    assert not (resumed / "teacher_cache.h5").exists()


def test_teacher_training_resumes_bit_for_bit(synthetic_file, tmp_path):
    overrides = [f"data.path={synthetic_file}", *COMMON, "task.decoder_channels=8"]
    uninterrupted, resumed = kill_and_resume("train-teacher", SMOKE_TEACHER, overrides, 3, tmp_path)
    assert_same_run(uninterrupted, resumed, "teacher.safetensors")
    epochs = read_csv(resumed / "metrics_epochs.csv")
    assert {"train_ce", "train_seg_ce", "eval_top1", "eval_miou"} <= set(epochs[-1])


# Ctrl-C (--int-at, 130, "interrupted (Ctrl-C)") takes the same deferred path: tests/train/test_ctrl_c.py sends
# it to a real process group; a second bit-for-bit run here cost 6.5 s of make test.
@pytest.mark.parametrize("option, code, stopped", [("--term-at", 143, "terminated (SIGTERM)")])
def test_sigterm_saves_a_checkpoint_at_the_signal_and_the_run_resumes_bit_for_bit(synthetic_file, tmp_path, option,
                                                                                  code, stopped):
    """A scheduler's preemption: SIGTERM after step 3 (checkpoints every 2 steps) finishes that step, saves at
    step 3, exits with 143 and one line; nothing is lost, and the resumed run ends as an uninterrupted one.
    Ctrl-C (SIGINT) does the same and exits with 130 (before issue 27 it saved nothing and gave no hint)."""
    overrides = [f"data.path={synthetic_file}", *COMMON, "task.decoder_channels=8"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    worker = start_worker("train-teacher", SMOKE_TEACHER, *overrides, "--out", resumed, option, 3)
    run_in_process("train-teacher", SMOKE_TEACHER, overrides, uninterrupted)  # while the worker starts
    terminated = wait(worker)
    assert terminated.returncode == code, terminated.stderr
    assert terminated.stderr.rstrip().splitlines()[-1] == (
        f"crossmodal train-teacher: {stopped} after saving a checkpoint at step 3 (epoch 1, batch 3); "
        f"--resume {resumed} continues from it")
    assert "Traceback" not in terminated.stderr
    assert load_checkpoint(resumed)["step"] == 3
    assert not [name for name in os.listdir(resumed) if ".tmp-" in name]
    result = cli_in_process("train-teacher", "--resume", resumed, "device=cpu")
    assert result.returncode == 0, result.stderr
    assert f"resumed {resumed / 'checkpoint.pt'} at epoch 1, step 3" in result.stdout
    assert_same_run(uninterrupted, resumed, "teacher.safetensors")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resuming_a_finished_run_only_exports_again(crd_runs, tmp_path):
    run = tmp_path / "finished"
    shutil.copytree(crd_runs[1], run)
    card = json.loads((run / "model_card.json").read_text())
    weights, _ = load_exported(run / "student.safetensors")
    checkpoint, metrics = _digest(run / "checkpoint.pt"), (run / "metrics.jsonl").read_text()
    (run / "student.safetensors").unlink()
    (run / "model_card.json").unlink()

    result = cli_in_process("distill", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert f"run folder: {run}" in result.stdout
    assert "epoch 1/2" not in result.stdout and "epoch 2/2" not in result.stdout  # no epoch ran
    assert f"the run has finished (2 epochs, step {2 * STEPS_PER_EPOCH}); writing its exports again" in result.stdout
    assert _digest(run / "checkpoint.pt") == checkpoint
    assert (run / "metrics.jsonl").read_text() == metrics
    assert assert_same_tensors(weights, load_exported(run / "student.safetensors")[0]) > 10
    again = json.loads((run / "model_card.json").read_text())
    assert again["final_metrics"] == card["final_metrics"] and again["final_metrics"]["epoch"] == 2
    assert again["teacher"]["fingerprint"] == card["teacher"]["fingerprint"]
    if "tensorboard" in sys.modules or importlib.util.find_spec("tensorboard"):  # its curves and end: not twice
        assert_events_match_metrics(run)
        assert [step for step, *_ in images(run / "tb")["curves"]] == [8]


def test_resume_of_a_folder_without_config_is_one_line(tmp_path):
    line = error_line(cli_in_process("distill", "--resume", tmp_path))
    assert str(tmp_path) in line and "not a run folder" in line and "config.yaml" in line


def test_resume_with_a_changed_config_key_is_one_line(crd_runs):
    run = crd_runs[1]
    before = _digest(run / "config.yaml")
    line = error_line(cli_in_process("distill", "--resume", run, "optim.lr=0.1"))
    assert "optim.lr" in line and "0.05 -> 0.1" in line and str(run) in line
    assert _digest(run / "config.yaml") == before


def test_out_at_an_existing_run_is_one_line(crd_runs, synthetic_file):
    run = crd_runs[0]
    line = error_line(cli_in_process("distill", SMOKE_DISTILL, "--out", run, f"data.path={synthetic_file}"))
    assert str(run) in line and "already holds a run" in line and "--resume" in line


def test_resume_of_another_verbs_run_is_one_line(crd_runs):
    line = error_line(cli_in_process("train-teacher", "--resume", crd_runs[0]))
    assert line.endswith(f"{crd_runs[0]} is a 'crossmodal distill' run; continue it with "
                         f"crossmodal distill --resume {crd_runs[0]}")


class Crash(Exception):
    pass


def test_run_that_died_before_its_first_checkpoint_starts_over(crd_runs, synthetic_file, tmp_path):
    """No checkpoint yet: --resume trains from the start, and the dead run's records do not stay behind."""
    run = tmp_path / "crashed"
    overrides = [f"data.path={synthetic_file}", *COMMON, *DISTILL, "train.log_every=1"]

    def crash(trainer):
        if trainer.step == 1:
            raise Crash

    with pytest.raises(Crash):
        run_in_process("distill", SMOKE_DISTILL, overrides, run, hooks=[crash])
    assert not (run / "checkpoint.pt").exists() and (run / "metrics.jsonl").read_text().count("\n") == 1

    result = cli_in_process("distill", "--resume", run, "train.log_every=3")  # a key a resume may change
    assert result.returncode == 0, result.stderr
    assert_same_run(crd_runs[0], run, "student.safetensors", device="auto")


# ------------------------------------------------------------------ damaged files and changed data (issue 27)
def test_a_damaged_checkpoint_is_refused_by_resume(crd_runs, tmp_path):
    """Before: a zeroed 4 KiB block in checkpoint.pt resumed with exit 0 and other weights."""
    run = tmp_path / "damaged"
    shutil.copytree(crd_runs[1], run)
    checkpoint = run / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    start = len(data) // 2 // 4096 * 4096  # a disk block among the tensors
    data[start:start + 4096] = bytes(4096)
    checkpoint.write_bytes(data)
    result = cli_in_process("distill", "--resume", run)
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"crossmodal distill: error: {checkpoint}: damaged: member ")
    assert line.endswith("; resume from an intact copy, or start the run again")


def test_a_zeroed_block_in_the_exported_student_is_refused_by_probe(crd_runs, synthetic_file, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(crd_runs[1], run)
    weights = run / "student.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8192:-4096] = bytes(4096)  # among the last tensors' bytes
    weights.write_bytes(data)
    line = error_line(cli_in_process("probe", "--checkpoint", run, "--data", synthetic_file, "--json",
                                     tmp_path / "p.json"))
    assert re.fullmatch(rf"crossmodal probe: error: {re.escape(str(weights))}: damaged: tensor \S+ fails its CRC-32 "
                        rf"check; restore an intact copy", line)


def test_resume_after_the_data_file_was_regenerated_is_refused(synthetic_file, tmp_path):
    """Before: --resume carried on with the regenerated data (only the teacher cache noticed). A copy of the same
    file (a new modification time) still resumes."""
    data, run = tmp_path / "scenes.h5", tmp_path / "run"
    shutil.copy(synthetic_file, data)
    run_in_process("distill", SMOKE_DISTILL, [f"data.path={data}", *COMMON, *DISTILL, "train.epochs=1"], run)
    os.remove(data)
    shutil.copy(synthetic_file, data)  # the same data, copied again
    assert cli_in_process("distill", "--resume", run).returncode == 0
    run_cli("prepare", "synthetic", "--out", data, "--num", "56", "--size", "32", "--seed", "1", "--overwrite",
            check=True)
    line = error_line(cli_in_process("distill", "--resume", run))
    assert re.fullmatch(rf"crossmodal distill: error: {re.escape(str(run / 'checkpoint.pt'))}: written for another "
                        rf"data file: data file {re.escape(str(data))} changed since the checkpoint \(.*num_samples "
                        rf"48 -> 56.*\); restore the file it started on, or start a new run with --out", line)
