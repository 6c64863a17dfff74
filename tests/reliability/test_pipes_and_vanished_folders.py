"""Outputs whose reader or folder goes away while a command runs: a closed pipe (``crossmodal inspect F.h5 |
head -1``) ends quietly with 141, and a run folder deleted while training is one line naming it. (Refused
writes of a full or read-only disk: test_full_disk.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, cli, error_line

SMOKE_TEACHER = ROOT / "experiments" / "configs" / "smoke_teacher.yaml"


# ----------------------------------------------------------------------------------------- a closed pipe
@pytest.mark.parametrize("verb", ["inspect", "report"])
def test_a_closed_pipe_ends_quietly(verb, synthetic_file, tmp_path):
    """``crossmodal inspect F.h5 | head -1``: the reader is gone before anything is written (closed here
    before the command starts writing, so that every run meets it). Before: a BrokenPipeError traceback."""
    if verb == "inspect":
        args = ["inspect", synthetic_file]
    else:
        probe_result = tmp_path / "probe.json"
        probe_result.write_text(json.dumps(_probe_result()))
        args = ["report", probe_result, "--out", tmp_path / "report"]
    process = subprocess.Popen([sys.executable, "-m", "crossmodal", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait() == 141 and stderr == ""  # 128 + SIGPIPE, as `cat` or `grep` would end


def _probe_result() -> dict:
    score = {"top1": 0.5, "chosen": {"C": 1.0}, "holdout_top1": 0.5, "solver": "torch"}
    return {"format": "crossmodal-probe/1", "checkpoint": "run", "random_init": False, "method": "crd", "seed": 0,
            "modality": "depth", "data": "d.h5", "labels": "label", "classes": None, "train_split": "train",
            "test_split": "test", "num_train": 8, "num_test": 8, "num_classes": 2, "chance": 0.5,
            "stages": [{"stage": "embedding", "dim": 4, "linear": score,
                        "knn": {"top1": 0.5, "chosen": {"k": 1, "temperature": 0.1}}}]}


# ------------------------------------------------------------------------------ a run folder deleted meanwhile
def test_a_run_folder_deleted_while_training_is_one_line(tmp_path, synthetic_file, monkeypatch):
    """Before: a FileNotFoundError traceback from the metrics log."""
    from crossmodal.engine.metrics_log import MetricsLog

    real = MetricsLog.log

    def log(self, record):
        shutil.rmtree(self.run_dir, ignore_errors=True)  # the user's `rm -r` between two steps
        real(self, record)

    monkeypatch.setattr(MetricsLog, "log", log)
    run = tmp_path / "run"
    result = cli("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", "train.epochs=1",
                 "train.batch_size=8", "train.progress=false", "task.segmentation=null", "data.augment=false")
    assert error_line(result) == (f"crossmodal train-teacher: error: {run}: cannot write metrics.jsonl into it: "
                                  f"no such folder (was it removed?)")
    assert result.returncode == 2 and not run.exists()  # nothing writes it again
