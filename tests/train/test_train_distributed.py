"""Two gloo processes under ``torchrun`` distil the smoke config on synthetic data: every rank ends with the same
CRD memory banks and student, bit for bit, and rank 0 alone writes the run folder."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _run_helpers import ROOT, SMOKE_DISTILL, WORKER, load_checkpoint, subprocess_env
from tb_events import assert_events_match_metrics

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

STEPS_PER_EPOCH = 2  # 38 training scenes split over 2 ranks (19 each, padded), batch 8 per rank
OVERRIDES = ["train.batch_size=8", "train.epochs=2", "train.progress=false", "distill.options.crd.num_negatives=16"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).with_name("torchrun")
    command = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    result = subprocess.run([*command, "--nproc_per_node=2", f"--master_port={free_port()}", *map(str, args)],
                            capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_process_distillation_keeps_banks_equal_across_ranks(synthetic_file, tmp_path):
    run, dump = tmp_path / "run", tmp_path / "ranks"
    torchrun(WORKER, "distill", SMOKE_DISTILL, f"data.path={synthetic_file}", *OVERRIDES, "--out", run,
             "--dump", dump)
    ranks = [torch.load(dump / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]

    banks = ("crd.student_memory.rows", "crd.teacher_memory.rows")
    assert set(banks) | {"crd.z_student", "crd.z_teacher"} <= set(ranks[0]["final"])
    for part in ("initial", "final", "student"):
        assert list(ranks[0][part]) == list(ranks[1][part])
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), f"{part} {key} differs between the ranks"
    for key in banks:
        initial, final = ranks[0]["initial"][key], ranks[0]["final"][key]
        changed = (initial != final).any(dim=1)
        # every step writes both ranks' samples into every rank's banks: 2 ranks x 8 x 4 steps cover most rows
        assert changed.sum() >= 24, f"{key}: only {int(changed.sum())} rows were updated"
    assert float(ranks[0]["initial"]["crd.z_student"]) != float(ranks[0]["final"]["crd.z_student"])

    # rank 0's checkpoint holds the very same banks
    state = load_checkpoint(run)["model"]
    assert state["distillers.crd.student_memory.rows"].equal(ranks[1]["final"]["crd.student_memory.rows"])
    checkpoint = load_checkpoint(run)
    assert checkpoint["step"] == 2 * STEPS_PER_EPOCH
    # every rank's random state is kept, and they differ (each rank draws its own masks: seed + rank)
    per_rank = checkpoint["extra"]["rng_per_rank"]
    assert len(per_rank) == 2 and per_rank[0]["torch"].equal(checkpoint["rng"]["torch"])
    assert not per_rank[0]["torch"].equal(per_rank[1]["torch"])


def test_cli_under_torchrun_writes_the_run_folder_once(synthetic_file, tmp_path):
    run = tmp_path / "run"
    result = torchrun("-m", "crossmodal", "distill", SMOKE_DISTILL, "--out", run, f"data.path={synthetic_file}",
                      *OVERRIDES)
    assert result.stdout.count("run folder:") == 1 and f"run folder: {run}" in result.stdout
    assert result.stdout.count("student written to") == 1
    assert result.stdout.count("epoch 2/2:") == 1
    assert result.stdout.count("teacher.weights is null") == 1

    assert {path.name for path in run.iterdir()} == {
        "config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics_steps.csv", "metrics_epochs.csv", "curves.png",
        "student.safetensors", "model_card.json", "teacher_cache.h5", "tb"}  # no other rank's leftovers
    # rank 0 alone writes the events: one file, each step once, equal to metrics.jsonl
    assert_events_match_metrics(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["scope"], r["step"]) for r in records] == [
        ("step", 2), ("epoch", 2), ("step", 4), ("epoch", 4)]  # log_every 2 = an epoch: written once each
    step_record = records[0]
    # throughput counts both processes' samples
    assert step_record["samples_per_s"] > 0 and step_record["epoch"] == pytest.approx(1.0)
    card = json.loads((run / "model_card.json").read_text())
    assert card["processes"] == 2 and card["final_metrics"]["step"] == 2 * STEPS_PER_EPOCH
    assert card["data"]["num_samples"] == 38
