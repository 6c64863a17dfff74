"""Engine options exercised by tiny in-process runs: AdamW, bf16 autocast and channels-last on CPU, gradient
clipping, the step schedule with warm-up as applied, evaluation every N epochs, deterministic mode; and the
optimizer and seed values torch would refuse, as one line."""
from __future__ import annotations

import math

import pytest
import torch
from _run_helpers import (ENGINE_SMALL, ENGINE_STEPS_PER_EPOCH, SMOKE_DISTILL, SMOKE_TEACHER, assert_same_tensors,
                          cli_in_process, first_call, load_checkpoint, load_exported, records, run_in_process,
                          teacher_overrides)
from conftest import error_line

from crossmodal.config import ScheduleSection
from crossmodal.engine.schedule import learning_rate
from tolerance import gamma

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STEPS_PER_EPOCH = ENGINE_STEPS_PER_EPOCH
SMALL = ENGINE_SMALL


def test_adamw_is_used_with_its_options_and_checkpointed(synthetic_file, tmp_path):
    run = tmp_path / "run"
    seen = []
    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
        synthetic_file, "optim.name=adamw", "optim.lr=0.002", "optim.betas=[0.8, 0.95]", "optim.weight_decay=0.01"),
        run, hooks=[first_call(lambda trainer: seen.append(trainer.optimizer))])
    assert isinstance(seen[0], torch.optim.AdamW)
    group = load_checkpoint(run)["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 0.01
    state = load_checkpoint(run)["optimizer"]["state"]
    assert state and all({"exp_avg", "exp_avg_sq"} <= set(entry) for entry in state.values())
    assert all(int(entry["step"]) == STEPS_PER_EPOCH for entry in state.values())
    steps = records(run, "step")
    assert len(steps) == STEPS_PER_EPOCH and all(math.isfinite(r["loss"]) for r in steps)
    assert "grad_norm" not in steps[0]  # only logged when clipping


def test_bf16_autocast_on_cpu_runs_the_forward_in_bfloat16_and_keeps_float32_weights(synthetic_file, tmp_path):
    run = tmp_path / "run"
    dtypes: dict[str, list[torch.dtype]] = {"train": [], "eval": []}

    def watch(trainer) -> None:
        conv = trainer.task.encoder.model.conv1
        conv.register_forward_hook(
            lambda module, inputs, output: dtypes["train" if module.training else "eval"].append(output.dtype))

    record = run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file, "train.bf16=true"),
                            run, hooks=[first_call(watch)])
    assert dtypes["train"] == [torch.bfloat16] * (STEPS_PER_EPOCH - 1)  # the steps after the hook went in
    assert dtypes["eval"] and set(dtypes["eval"]) == {torch.bfloat16}  # evaluation is autocast too
    assert math.isfinite(record["train_loss"]) and 0 <= record["eval_top1"] <= 1
    checkpoint = load_checkpoint(run)
    weights = [v for k, v in checkpoint["model"].items() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    exported, _ = load_exported(run / "teacher.safetensors")
    assert {v.dtype for v in exported.values() if v.is_floating_point()} == {torch.float32}


def test_channels_last_layout_trains_the_same_model(synthetic_file, tmp_path):
    layouts = []

    def watch(trainer) -> None:
        conv = next(m for m in trainer.task.encoder.model.modules() if isinstance(m, torch.nn.Conv2d))
        layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
        conv.register_forward_pre_hook(lambda module, inputs: layouts.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))

    after_first_step = {}
    snapshot = first_call(lambda trainer: after_first_step.update(
        {key: value.detach().clone() for key, value in trainer.task.encoder.model.state_dict().items()}))
    plain = run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file), tmp_path / "plain",
                           hooks=[snapshot])
    run = tmp_path / "channels_last"
    last = run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(synthetic_file, "train.channels_last=true"),
                          run, hooks=[first_call(watch)])
    assert layouts and all(layouts)  # weights and the inputs of every later step, evaluation included
    # The same computation with other convolution kernels: each step's float32 rounding differs, and training
    # carries the difference on, so no rounding bound holds after several steps. What "the same model" means
    # instead: the runs differ by a small part of what training itself did. The losses of every step agree to 1%
    # of how far the loss moved over the epoch, the weights to 1% of how far the steps after the first moved
    # them, and the evaluation gives the same top-1.
    plain_steps, last_steps = records(tmp_path / "plain", "step"), records(run, "step")
    moved = max(r["loss"] for r in plain_steps) - min(r["loss"] for r in plain_steps)
    assert all(abs(a["loss"] - b["loss"]) <= 0.01 * moved for a, b in zip(plain_steps, last_steps))
    assert last["train_loss"] == pytest.approx(plain["train_loss"], rel=0, abs=0.01 * moved)
    assert last["eval_top1"] == plain["eval_top1"]
    exported, _ = load_exported(run / "teacher.safetensors")  # exported from channels-last tensors
    reference, _ = load_exported(tmp_path / "plain" / "teacher.safetensors")
    assert list(exported) == list(reference)
    weights = [key for key in reference if reference[key].is_floating_point() and key in after_first_step]
    apart = torch.cat([(exported[key].float() - reference[key].float()).flatten() for key in weights]).norm()
    trained = torch.cat([(reference[key].float() - after_first_step[key].float()).flatten() for key in weights]).norm()
    assert 0 < apart <= 0.01 * trained


def test_clip_grad_norm_clips_and_logs_the_norm_before_clipping(synthetic_file, tmp_path):
    run = tmp_path / "run"
    clip = 0.05
    clipped_norms, sizes = [], []

    def measure(trainer) -> None:  # the gradients of the step just taken stay until the next zero_grad
        grads = [p.grad for p in trainer.parameters if p.grad is not None]
        clipped_norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                                          for g in grads]))))
        sizes.append((max(g.numel() for g in grads), len(grads)))

    record = run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
        synthetic_file, f"train.clip_grad_norm={clip}"), run, hooks=[measure])
    steps = records(run, "step")
    assert [r["step"] for r in steps] == list(range(1, STEPS_PER_EPOCH + 1))
    norms = [r["grad_norm"] for r in steps]
    assert all(math.isfinite(norm) and norm > clip for norm in norms)  # so every step was clipped ...
    # ... down to the limit: torch scales by clip / (norm + 1e-6), and the norm of norms, here and in torch, is a
    # float32 sum of squares over a tensor's entries, then over the tensors (tests/tolerance.py)
    largest, count = max(size for size, _ in sizes), max(count for _, count in sizes)
    allowed = 1e-6 / min(norms) + 2 * gamma(largest + count + 4)
    assert clipped_norms == pytest.approx([clip] * STEPS_PER_EPOCH, rel=allowed)
    assert record["train_grad_norm"] == pytest.approx(sum(norms) / len(norms))


def test_step_schedule_with_warmup_is_the_rate_each_step_ran_at(synthetic_file, tmp_path):
    run = tmp_path / "run"
    schedule = ["schedule.name=step", "schedule.milestones=[1, 2]", "schedule.gamma=0.1", "schedule.warmup_epochs=0.5"]
    lrs_applied = []
    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
        synthetic_file, "optim.lr=0.4", "train.epochs=3", *schedule), run,
        hooks=[lambda trainer: lrs_applied.append(trainer.optimizer.param_groups[0]["lr"])])
    config = load_checkpoint(run)["config"]
    steps = records(run, "step")
    assert [r["step"] for r in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    expected = [learning_rate(ScheduleSection(**config["schedule"]), 0.4, r["step"] - 1, STEPS_PER_EPOCH, 3) for r in steps]
    # by hand: 2 warm-up steps (0.2, 0.4), the rest of epoch 1 at 0.4, then x0.1 at epoch 1 and again at epoch 2
    assert expected == pytest.approx([0.2, 0.4, 0.4, 0.4] + [0.04] * 4 + [0.004] * 4)
    assert [r["lr"] for r in steps] == expected  # the rate recorded for each step
    assert lrs_applied == expected  # the rate the optimizer stepped with


def test_eval_every_evaluates_every_nth_epoch_and_the_last(synthetic_file, tmp_path):
    run = tmp_path / "run"
    evaluations = []

    def count(trainer) -> None:
        evaluate = trainer.setup.task.evaluate
        trainer.setup.task.evaluate = lambda batches: evaluations.append(trainer.epoch + 1) or evaluate(batches)

    run_in_process("train-teacher", SMOKE_TEACHER, teacher_overrides(
        synthetic_file, "train.epochs=3", "train.eval_every=2", "train.log_every=100"), run,
        hooks=[first_call(count)])
    epochs = records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert ["eval_top1" in r for r in epochs] == [False, True, True]  # epoch 2, and the last one
    assert evaluations == [2, 3]


@pytest.fixture
def restore_determinism():
    """run_training turns deterministic algorithms on for the process; give later tests the state they had."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_runs_repeat_bit_for_bit(synthetic_file, tmp_path, restore_determinism):
    modes = []
    overrides = [f"data.path={synthetic_file}", *SMALL, "train.epochs=1", "deterministic=true", "data.augment=true",
                 "teacher.cache=false", "distill.options.crd.num_negatives=16"]
    for name in ("first", "second"):
        run_in_process("distill", SMOKE_DISTILL, overrides, tmp_path / name,
                       hooks=[first_call(lambda trainer: modes.append(torch.are_deterministic_algorithms_enabled()))])
    assert modes == [True, True]
    first, second = (load_checkpoint(tmp_path / name)["model"] for name in ("first", "second"))
    assert assert_same_tensors(first, second) > 10


def test_two_loader_workers_train_the_same_weights_as_none(synthetic_file, tmp_path, restore_determinism):
    """Workers read whole batches and reuse their shared-memory buffers round robin (recycle_batches): the
    batches, hence the weights, are those of reading in the main process."""
    overrides = [f"data.path={synthetic_file}", *SMALL, "train.epochs=2", "deterministic=true", "data.augment=true",
                 "teacher.cache=false", "distill.options.crd.num_negatives=16"]
    for workers in (0, 2):
        run_in_process("distill", SMOKE_DISTILL, [*overrides, f"data.num_workers={workers}"], tmp_path / str(workers))
    serial, parallel = (load_checkpoint(tmp_path / str(workers))["model"] for workers in (0, 2))
    assert assert_same_tensors(serial, parallel) > 10


# ------------------------------------------------------------------------------------------- regressions
@pytest.mark.parametrize("overrides, expected", [
    (["optim.name=adamw", "optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1), got [0.9]"),
    (["optim.name=adamw", "optim.betas=[1.0, 0.999]"], "optim.betas must be two numbers in [0, 1)"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
    (["seed=-1"], "'seed' must be an integer in [0, 2**63), got -1"),
], ids=["betas-length", "betas-range", "nesterov-without-momentum", "negative-seed"])
def test_optimizer_and_seed_values_torch_refuses_are_one_line(overrides, expected, synthetic_file, tmp_path):
    """Before the fix: an IndexError or ValueError traceback from torch (the seed: mid-run, in the augmentation's
    SeedSequence, after the run folder was made)."""
    out = tmp_path / "run"
    result = cli_in_process("distill", SMOKE_DISTILL, "--out", out, f"data.path={synthetic_file}", *SMALL,
                            "data.augment=true", *overrides)
    line = error_line(result)
    assert result.returncode == 2 and expected in line
    assert not out.exists()
