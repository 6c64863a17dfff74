"""The engine's bookkeeping, each point found missing by mutation testing or a reviewer: default run folders
claimed one per run, the global random state restored on resume, the dataset told its epoch, step records
as window means, and DDP told when a distillation leaves parameters unused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _run_helpers import (ENGINE_SMALL, ENGINE_STEPS_PER_EPOCH, SMOKE_TEACHER, assert_same_tensors, cli_in_process,
                          load_checkpoint, one_thread, records, run_in_process, teacher_overrides)

from crossmodal.distill import create_distiller, list_distillers
from crossmodal.errors import ConfigError
from crossmodal.models import Encoder, FrozenTeacher
from crossmodal.train.distillation import DistillTask, TeacherView

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STEPS_PER_EPOCH = ENGINE_STEPS_PER_EPOCH
SMALL = ENGINE_SMALL


def test_runs_of_one_config_in_the_same_second_get_their_own_default_folders(synthetic_file, tmp_path,
                                                                             monkeypatch):
    """Without --out the folder is runs/VERB-CONFIG-TIME. Before the fix, a sweep launching several runs of one
    config within a second trained them all into one folder (the check for an existing run came before any of
    them had written its config): one checkpoint and export overwrote the other, metrics interleaved."""
    from crossmodal import run_folder
    from crossmodal.train import run as run_module

    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "runs" / "same-second"
    monkeypatch.setattr(run_folder, "default_run_dir", lambda verb, config_path: str(taken))
    taken.mkdir(parents=True)
    (taken / "building.txt").write_text("a run that has not written its config yet")
    overrides = teacher_overrides(synthetic_file)
    with one_thread():
        with pytest.raises(ConfigError, match="train.batch_size 64"):  # rejected: its claimed folder goes
            run_module.run_training("train-teacher", str(SMOKE_TEACHER),
                                    [*overrides, "train.batch_size=64"])
        folders = [run_module.run_training("train-teacher", str(SMOKE_TEACHER),
                                           overrides)[0] for _ in range(2)]
    assert folders == [f"{taken}-2", f"{taken}-3"]
    assert sorted(path.name for path in taken.parent.iterdir()) == ["same-second", "same-second-2",
                                                                     "same-second-3"]
    assert [path.name for path in taken.iterdir()] == ["building.txt"]  # the other run's folder is untouched
    assert all((Path(folder) / "teacher.safetensors").is_file() for folder in folders)


class Crash(Exception):
    pass


def test_resume_restores_the_global_random_state(synthetic_file, tmp_path):
    """Stochastic depth draws from torch's global generator every step, so a resumed run matches only if the
    checkpoint's random state is restored (the smoke models draw nothing from it: the SIGKILL tests would
    pass without the restore)."""
    overrides = teacher_overrides(synthetic_file, "train.epochs=2", "train.checkpoint_every_steps=2",
                                  "model.encoder.drop_path_rate=0.3")
    run_in_process("train-teacher", SMOKE_TEACHER, overrides, tmp_path / "uninterrupted")

    def crash(trainer) -> None:
        if trainer.step == 3:
            raise Crash

    resumed = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_in_process("train-teacher", SMOKE_TEACHER, overrides, resumed, hooks=[crash])
    assert load_checkpoint(resumed)["step"] == 2
    torch.manual_seed(12345)  # whatever the process drew meanwhile must not matter either
    result = cli_in_process("train-teacher", "--resume", resumed)
    assert result.returncode == 0, result.stderr
    expected, got = load_checkpoint(tmp_path / "uninterrupted"), load_checkpoint(resumed)
    assert got["step"] == 2 * STEPS_PER_EPOCH
    assert assert_same_tensors(expected["model"], got["model"]) > 10
    assert assert_same_tensors(expected["rng"], got["rng"]) > 0


def test_every_epoch_tells_the_dataset_its_epoch(synthetic_file, tmp_path):
    """The augmentation of a sample depends on (seed, epoch, sample): without set_epoch every epoch would see
    the same crops."""
    epochs = []
    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file, "train.epochs=2",
                                                                     "data.augment=true"), tmp_path / "run",
                   hooks=[lambda trainer: epochs.append(trainer.setup.train_data.epoch)])
    assert epochs == [0] * STEPS_PER_EPOCH + [1] * STEPS_PER_EPOCH


def test_step_records_are_means_over_the_steps_since_the_last_record(synthetic_file, tmp_path):
    """log_every 3 over 4-step epochs: records at steps 3, 4 (the epoch's end), 6 and 8, each the mean of the
    per-step losses of its window (as logged by the same run with log_every 1)."""
    every_step = tmp_path / "every_step"
    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file, "train.epochs=2"), every_step)
    loss = {r["step"]: r["loss"] for r in records(every_step, "step")}
    run = tmp_path / "every_third"
    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
        synthetic_file, "train.epochs=2", "train.log_every=3"), run)
    got = {r["step"]: r["loss"] for r in records(run, "step")}
    windows = {3: (1, 2, 3), 4: (4,), 6: (5, 6), 8: (7, 8)}
    assert list(got) == list(windows)
    for step, window in windows.items():
        assert got[step] == pytest.approx(sum(loss[s] for s in window) / len(window), rel=1e-12)
    assert [r["train_loss"] for r in records(run, "epoch")] == pytest.approx(
        [sum(loss[s] for s in range(1, 5)) / 4, sum(loss[s] for s in range(5, 9)) / 4], rel=1e-12)


@pytest.mark.parametrize("student_classes", [0, 10], ids=["no-classifier", "classifier"])
@pytest.mark.parametrize("name", list_distillers())
def test_ddp_is_told_when_a_distillation_leaves_parameters_unused(name, student_classes):
    """DDP without find_unused_parameters fails on its second step when a parameter got no gradient. Before the
    fix, FitNet's hint at stage 2 left the deeper stages without one, and a 2-process FitNet run died ("Expected
    to have finished reduction in the prior iteration"); every registered distiller is checked here."""
    torch.manual_seed(0)
    teacher = FrozenTeacher(Encoder("test_resnet", in_chans=3, num_classes=10, small_input=True))
    student = Encoder("test_resnet", in_chans=1, num_classes=student_classes, small_input=True)
    options = {"crd": {"num_negatives": 8}, "crd+kd": {"crd": {"num_negatives": 8}}}.get(name, {})
    try:
        distiller = create_distiller(name, student.spec, teacher.spec, num_samples=16, **options)
    except ConfigError:
        # the logit methods need the student's logits
        assert name in ("kd", "crd+kd", "dkd", "mlld", "c2kd") and student_classes == 0
        return
    task = DistillTask(student, "depth", TeacherView(teacher, "rgb"), {name: distiller}, {name: 1.0}).train()
    loss, _ = task({"depth": torch.randn(4, 1, 16, 16), "rgb": torch.randn(4, 3, 16, 16), "index": torch.arange(4)})
    loss.backward()
    unused = [key for key, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert task.may_leave_parameters_unused() == bool(unused), unused
