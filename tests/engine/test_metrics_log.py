"""MetricsLog: JSON lines while training, rewind on resume, CSV tables and a PNG at the end."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from crossmodal.engine.metrics_log import EPOCHS_CSV, JSONL, PLOT, STEPS_CSV, MetricsLog

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def filled(run_dir, steps=6, per_epoch=3):
    log = MetricsLog(str(run_dir))
    for step in range(1, steps + 1):
        log.log({"scope": "step", "step": step, "epoch": step / per_epoch, "lr": 0.1 / step,
                 "loss": torch.tensor(1.0 / step), "crd": np.float32(0.5)})
        if step % per_epoch == 0:
            log.log({"scope": "epoch", "step": step, "epoch": step // per_epoch, "train_loss": 0.25 * step,
                     "eval_top1": 0.1 * step})
    return log


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_log_writes_plain_json_lines(tmp_path):
    log = filled(tmp_path, steps=2, per_epoch=2)
    lines = (tmp_path / JSONL).read_text().splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {"scope": "step", "step": 1, "epoch": 0.5, "lr": 0.1, "loss": 1.0, "crd": 0.5}
    assert log.records()[2] == {"scope": "epoch", "step": 2, "epoch": 1, "train_loss": 0.5, "eval_top1": 0.2}


def test_records_of_a_new_run_are_empty(tmp_path):
    assert MetricsLog(str(tmp_path)).records() == []


def test_rewind_drops_records_after_the_step(tmp_path):
    log = filled(tmp_path)
    log.rewind(4)
    records = log.records()
    assert [(r["scope"], r["step"]) for r in records] == [("step", 1), ("step", 2), ("step", 3), ("epoch", 3),
                                                          ("step", 4)]
    assert os.listdir(tmp_path) == [JSONL]  # rewritten in place, no temporary left


def test_rewind_tolerates_a_truncated_last_line(tmp_path):
    log = filled(tmp_path, steps=3)
    with open(tmp_path / JSONL, "a", encoding="utf-8") as handle:
        handle.write('{"scope": "step", "step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in log.records()] == [1, 2, 3, 3]
    log.rewind(2)
    assert [r["step"] for r in log.records()] == [1, 2]
    assert (tmp_path / JSONL).read_text().endswith("}\n")


def test_log_after_a_truncated_line_keeps_the_new_record(tmp_path):
    filled(tmp_path, steps=2)
    with open(tmp_path / JSONL, "a", encoding="utf-8") as handle:
        handle.write('{"scope": "step", "st')
    resumed = MetricsLog(str(tmp_path))
    resumed.log({"scope": "step", "step": 3, "loss": 0.3})
    resumed.log({"scope": "step", "step": 4, "loss": 0.25})
    assert [(r["step"], r.get("loss")) for r in resumed.records()][-2:] == [(3, 0.3), (4, 0.25)]


def test_finish_writes_tables_and_curves(tmp_path):
    log = filled(tmp_path)
    log.finish()
    assert sorted(os.listdir(tmp_path)) == sorted([JSONL, STEPS_CSV, EPOCHS_CSV, PLOT])
    steps = read_csv(tmp_path / STEPS_CSV)
    assert list(steps[0]) == ["step", "epoch", "lr", "loss", "crd"]
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    assert float(steps[1]["loss"]) == 0.5 and float(steps[3]["lr"]) == 0.025
    epochs = read_csv(tmp_path / EPOCHS_CSV)
    assert [(int(r["epoch"]), float(r["train_loss"])) for r in epochs] == [(1, 0.75), (2, 1.5)]
    assert [float(r["eval_top1"]) for r in epochs] == pytest.approx([0.3, 0.6])
    png = (tmp_path / PLOT).read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR" and len(png) > 1000


def test_finish_with_uneven_records_and_non_finite_values(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.log({"scope": "step", "step": 1, "lr": 0.1, "loss": float("nan")})
    log.log({"scope": "step", "step": 2, "lr": 0.1, "loss": 1.0, "grad_norm": 3.0})
    log.finish()
    steps = read_csv(tmp_path / STEPS_CSV)
    assert list(steps[0]) == ["step", "lr", "loss", "grad_norm"]
    assert steps[0]["grad_norm"] == "" and steps[1]["grad_norm"] == "3.0"
    assert read_csv(tmp_path / EPOCHS_CSV) == []
    assert (tmp_path / PLOT).read_bytes()[:8] == PNG_SIGNATURE


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(str(tmp_path), enabled=False)
    log.log({"scope": "step", "step": 1, "loss": 1.0})
    log.rewind(0)
    log.finish()
    assert os.listdir(tmp_path) == []
    assert log.records() == []


def test_disabled_log_leaves_an_existing_file_alone(tmp_path):
    filled(tmp_path, steps=3)
    before = (tmp_path / JSONL).read_bytes()
    MetricsLog(str(tmp_path), enabled=False).rewind(1)
    assert (tmp_path / JSONL).read_bytes() == before


def test_epoch_line_shows_losses_as_numbers_and_evaluation_as_percent():
    from crossmodal.engine.metrics_log import epoch_line

    record = {"scope": "epoch", "step": 4, "epoch": 2, "train_loss": 0.123456, "train_loss/crd": 7.5,
              "train_ce": 2.0, "eval_top1": 0.4752, "eval_miou": 0.1168, "time_s": 3.2}
    assert epoch_line(record) == "train_loss 0.1235, train_loss/crd 7.5, eval_top1 47.5%, eval_miou 11.7%"
    record = {"epoch": 1, "train_loss": 2.0, "eval_student_top1": 0.5, "eval_pixel_acc": 0.875, "eval_w": 0.003}
    assert epoch_line(record) == "train_loss 2, eval_student_top1 50.0%, eval_pixel_acc 87.5%, eval_w 0.003"
