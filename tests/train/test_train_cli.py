"""``crossmodal distill`` / ``crossmodal train-teacher`` end to end: the smoke config in under a minute and
everything its run folder holds, a trained teacher distilled with KD + CRD, and config errors as one line each,
before anything trains."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from _run_helpers import (SMOKE_DISTILL, SMOKE_TEACHER, cli_in_process, load_checkpoint, load_exported,
                          read_csv)
from conftest import error_line, run_cli
from tolerance import gamma

from crossmodal.data import read_layout
from crossmodal.models import FrozenTeacher, create_encoder
from crossmodal.config.schema import load_config
from crossmodal.config import SCHEMAS

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

SMOKE_STEPS_PER_EPOCH = 8  # 256 training scenes of the 320 generated, batch 32
SMALL = ["train.batch_size=8", "train.epochs=1", "train.progress=false"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke config exactly as shipped, run by the CLI in a fresh folder; its data file is generated at the
    data.path written beside data.generate (it is absent)."""
    tmp = tmp_path_factory.mktemp("smoke")
    run, data = tmp / "run", tmp / "runs" / "smoke" / "synthetic.h5"
    start = time.perf_counter()
    result = run_cli("distill", SMOKE_DISTILL, "--out", run, cwd=tmp)
    return run, data, result, time.perf_counter() - start


def test_smoke_config_runs_end_to_end_in_under_a_minute(smoke):
    run, data, result, seconds = smoke
    assert result.returncode == 0, result.stderr
    assert seconds < 60
    assert "Traceback" not in result.stderr and "negatives per anchor" not in result.stderr  # no self-warning
    assert f"generating the synthetic data set {data}" in result.stderr and data.is_file()
    assert result.stdout.splitlines()[-1] == f"run folder: {run}"
    assert f"student written to {run / 'student.safetensors'}" in result.stdout
    assert "teacher.weights is null" in result.stdout  # the random smoke teacher is flagged
    assert {path.name for path in run.iterdir()} == {
        "config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics_steps.csv", "metrics_epochs.csv", "curves.png",
        "student.safetensors", "model_card.json", "teacher_cache.h5", "tb"}


def test_smoke_run_config_is_resolved_and_reloadable(smoke):
    run, data, _, _ = smoke
    config = load_config(run / "config.yaml", SCHEMAS["distill"])
    assert config == yaml.safe_load((run / "config.yaml").read_text())  # nothing left to fill in
    assert config["data"]["path"] == str(data)  # the config's relative path, made absolute
    assert config["train"] == {**config["train"], "epochs": 2, "batch_size": 32, "log_every": 2}
    assert config["distill"] == {"name": ["crd"], "weights": {},
                                 "options": {"crd": {"feat_dim": 32, "num_negatives": 64}}}
    assert config["optim"]["betas"] == [0.9, 0.999] and config["deterministic"] is False  # defaults filled
    assert json.loads((run / "model_card.json").read_text())["config"] == config


def test_smoke_run_checkpoint_holds_the_whole_task_with_crd_banks(smoke):
    run = smoke[0]
    checkpoint = load_checkpoint(run)  # weights_only=True
    assert checkpoint["format"] == "crossmodal-checkpoint/1" and checkpoint["verb"] == "distill"
    assert (checkpoint["epoch"], checkpoint["batch_in_epoch"], checkpoint["step"]) == (2, 0, 2 * SMOKE_STEPS_PER_EPOCH)
    state = checkpoint["model"]
    banks = {key: value for key, value in state.items() if "memory" in key}
    assert set(banks) == {"distillers.crd.student_memory.rows", "distillers.crd.teacher_memory.rows"}
    for bank in banks.values():
        assert bank.shape == (256, 32) and torch.isfinite(bank).all() and bank.abs().sum() > 0
    assert state["distillers.crd.z_student"] > 0 and state["distillers.crd.z_teacher"] > 0  # set on step 1
    assert any(key.startswith("student.model.") for key in state)
    assert not any(key.startswith("teacher") for key in state)  # the frozen teacher is not trained state
    momentum = checkpoint["optimizer"]["state"]
    assert len(momentum) == len(checkpoint["optimizer"]["param_groups"][0]["params"]) > 0
    assert 0 < checkpoint["optimizer"]["param_groups"][0]["lr"] < 0.05 * 0.05  # the cosine schedule's last step


def test_smoke_run_metrics_have_step_and_epoch_records(smoke):
    run = smoke[0]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["scope"] == "step"]
    epochs = [r for r in records if r["scope"] == "epoch"]
    assert len(steps) + len(epochs) == len(records)
    assert [r["step"] for r in steps] == list(range(2, 2 * SMOKE_STEPS_PER_EPOCH + 1, 2))  # log_every 2
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 8), (2, 16)]
    for record in steps:
        assert {"loss", "crd", "lr", "samples_per_s"} <= set(record) and record["loss"] > 0
        # CRD's default weight, the only term: float32 rounds 0.8 and the product; the window's means are float64
        assert record["loss"] == pytest.approx(0.8 * record["crd"], rel=gamma(3))
    assert max(r["lr"] for r in steps) == pytest.approx(0.05)
    assert all(r["train_loss"] > 0 and r["time_s"] > 0 for r in epochs)

    step_rows, epoch_rows = read_csv(run / "metrics_steps.csv"), read_csv(run / "metrics_epochs.csv")
    assert [int(row["step"]) for row in step_rows] == [r["step"] for r in steps]
    assert [float(row["loss"]) for row in step_rows] == [r["loss"] for r in steps]
    assert [float(row["train_loss"]) for row in epoch_rows] == [r["train_loss"] for r in epochs]
    assert "scope" not in step_rows[0]

    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_smoke_run_exports_student_and_model_card(smoke):
    run, data, _, _ = smoke
    weights, metadata = load_exported(run / "student.safetensors")
    encoder = json.loads(metadata.pop("encoder"))
    crc32s = json.loads(metadata.pop("crc32"))  # one per tensor, checked when the file is read
    assert sorted(crc32s) == sorted(weights) and all(re.fullmatch("[0-9a-f]{8}", value) for value in crc32s.values())
    assert metadata == {"timm_name": "test_resnet", "in_chans": "1", "num_classes": "0", "small_input": "true",
                        "modality": "depth"}
    assert encoder == {"name": "test_resnet", "in_chans": 1, "num_classes": 0, "small_input": True,
                       "input_norm": None}
    assert not any(key.startswith(("student.", "model.")) for key in weights)  # plain timm keys
    state = load_checkpoint(run)["model"]
    assert all(torch.equal(value, state[f"student.model.{key}"]) for key, value in weights.items())
    umask = os.umask(0)
    os.umask(umask)
    assert (run / "student.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not private to its writer

    card = json.loads((run / "model_card.json").read_text())
    assert card["verb"] == "distill" and card["weights"] == "student.safetensors" and card["modality"] == "depth"
    assert card["encoder"]["name"] == "test_resnet" and card["encoder"]["in_chans"] == 1
    assert card["data"]["path"] == str(data) and card["data"]["split"] == "train"
    assert card["data"]["num_samples"] == 256
    teacher = card["teacher"]
    assert teacher["modality"] == "rgb" and teacher["weights"] is None and teacher["cached"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", teacher["fingerprint"])
    assert card["distillers"] == {"crd": {"weight": 0.8, "options": {"feat_dim": 32, "num_negatives": 64}}}
    assert card["loss"] == {"ce": 0.0, "class_labels": None}
    last_epoch = read_csv(run / "metrics_epochs.csv")[-1]
    assert card["final_metrics"]["epoch"] == 2
    assert card["final_metrics"]["train_loss"] == float(last_epoch["train_loss"])
    assert "timm.create_model('test_resnet'" in card["load_with_timm"]


@pytest.fixture(scope="module")
def teacher_run(synthetic_file, tmp_path_factory) -> Path:
    """A one-epoch train-teacher run of the smoke teacher config (through the CLI's entry point)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", *SMALL,
                            "task.decoder_channels=8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"run folder: {run}"
    return run


def test_train_teacher_then_distill_with_kd_and_crd(teacher_run, synthetic_file, tmp_path):
    card = json.loads((teacher_run / "model_card.json").read_text())
    assert card["verb"] == "train-teacher" and card["weights"] == "teacher.safetensors"
    assert card["encoder"]["num_classes"] == 10 and card["encoder"]["in_chans"] == 3
    assert {"eval_top1", "eval_miou", "train_ce", "train_seg_ce"} <= set(card["final_metrics"])

    run = tmp_path / "student"
    result = run_cli("distill", SMOKE_DISTILL, "--out", run, f"data.path={synthetic_file}", *SMALL,
                     f"teacher.weights={teacher_run}", "teacher.encoder=null", "loss.kd=1",
                     "student.encoder.num_classes=10", "loss.class_labels=label",
                     "distill.options.crd.num_negatives=16")
    assert result.returncode == 0, result.stderr
    assert "teacher.weights is null" not in result.stdout

    student_card = json.loads((run / "model_card.json").read_text())
    teacher_file = teacher_run / "teacher.safetensors"
    teacher = student_card["teacher"]
    assert teacher["weights"] == str(teacher_file) and teacher["encoder"]["num_classes"] == 10
    # the fingerprint is that of the trained teacher, as loaded from its export
    encoder = {k: v for k, v in card["encoder"].items() if v is not None}
    trained_teacher = FrozenTeacher(create_encoder({**encoder, "weights": str(teacher_file)}))
    assert teacher["fingerprint"] == trained_teacher.fingerprint()
    assert set(student_card["distillers"]) == {"crd", "kd"}
    assert student_card["distillers"]["kd"]["weight"] == 1.0
    assert student_card["encoder"]["num_classes"] == 10
    assert student_card["loss"] == {"ce": 0.0, "class_labels": "label"}

    epoch = read_csv(run / "metrics_epochs.csv")[-1]
    assert float(epoch["train_kd"]) > 0 and float(epoch["train_crd"]) > 0
    # each step's float32 kd + 0.8 x crd rounds three times (0.8, the product, the sum) of positive terms
    assert float(epoch["train_loss"]) == pytest.approx(float(epoch["train_kd"]) + 0.8 * float(epoch["train_crd"]),
                                                       rel=gamma(3))
    assert 0.0 <= float(epoch["eval_student_top1"]) <= 1.0
    weights, metadata = load_exported(run / "student.safetensors")
    assert metadata["num_classes"] == "10" and weights["fc.weight"].shape[0] == 10


# ------------------------------------------------------------------------------------------- config errors
def _fails_before_training(result, out: Path) -> str:
    line = error_line(result)
    assert result.returncode == 2
    assert not out.exists()  # no run folder is left behind: the same command, corrected, must work
    return line


def test_override_typo_is_one_line(synthetic_file, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", SMOKE_DISTILL, "--out", out, f"data.path={synthetic_file}", "optim.lrr=0.1")
    line = _fails_before_training(result, out)
    assert "unknown key 'optim.lrr'" in line and "lr" in line and str(SMOKE_DISTILL) in line


def test_unknown_key_in_the_file_is_one_line(synthetic_file, tmp_path):
    config = yaml.safe_load(SMOKE_DISTILL.read_text())
    config["trian"] = {"epochs": 1}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    line = _fails_before_training(cli_in_process("distill", path, "--out", out, f"data.path={synthetic_file}"), out)
    assert str(path) in line and "unknown key 'trian'" in line


def test_wrong_type_in_the_file_is_one_line(synthetic_file, tmp_path):
    config = yaml.safe_load(SMOKE_DISTILL.read_text())
    config["train"]["epochs"] = "two"
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    line = _fails_before_training(cli_in_process("distill", path, "--out", out, f"data.path={synthetic_file}"), out)
    assert str(path) in line and "train.epochs" in line and "integer" in line and "'two'" in line


def test_missing_data_file_is_one_line(tmp_path):
    missing, out = tmp_path / "absent.h5", tmp_path / "run"
    result = cli_in_process("distill", SMOKE_DISTILL, "--out", out, f"data.path={missing}", "data.generate=null")
    line = _fails_before_training(result, out)
    assert str(missing) in line and "no such data file" in line and "data.path" in line
    assert not missing.exists()


@pytest.mark.parametrize("overrides, expected", [
    (["teacher.weights=TMP/none.safetensors"], ["TMP/none.safetensors", "teacher.weights"]),
    (["teacher.weights=TMP"], ["TMP", "teacher.weights", "model_card.json"]),
    (["distill.name=crdd"], ["distill.name", "'crdd'", "crd"]),
    (["distill.options.crd.bogus=1"], ["distill.options.crd.bogus", "feat_dim"]),
    (["student.modality=thermal"], ["student.modality", "'thermal'", "DATA", "depth"]),
    (["teacher.modality=thermal"], ["teacher.modality", "'thermal'", "DATA"]),
    (["loss.class_labels=seg"], ["loss.class_labels", "'seg'"]),
    (["loss.kd=1"], ["loss.kd", "classifier", "student (0)", "teacher (0)"]),
    (["data.augment=true", "teacher.cache=true"], ["teacher.cache=true", "data.augment=false"]),
    (["teacher.cache=yes please"], ["teacher.cache", "true, false or auto"]),
    (["train.batch_size=64"], ["train.batch_size 64", "38 training samples"]),
], ids=["missing-teacher-file", "teacher-folder-not-a-run", "unknown-distiller", "unknown-distiller-option",
        "student-modality-absent", "teacher-modality-absent", "not-a-class-label-set", "kd-without-classifiers",
        "cache-with-augmentation", "cache-not-a-choice", "batch-larger-than-the-data"])
def test_distill_config_errors_are_one_line(overrides, expected, synthetic_file, tmp_path):
    out = tmp_path / "run"
    overrides = [item.replace("TMP", str(tmp_path)) for item in overrides]
    if overrides == ["loss.kd=1"]:  # KD between encoders without classifiers
        overrides.append("teacher.encoder.num_classes=0")
    result = cli_in_process("distill", SMOKE_DISTILL, "--out", out, f"data.path={synthetic_file}", *overrides)
    line = _fails_before_training(result, out)
    for text in expected:
        assert text.replace("TMP", str(tmp_path)).replace("DATA", str(synthetic_file)) in line, line


def test_train_teacher_unknown_label_set_is_one_line(synthetic_file, tmp_path):
    out = tmp_path / "run"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", out, f"data.path={synthetic_file}",
                            "task.classes=scene")
    line = _fails_before_training(result, out)
    assert "'scene'" in line and str(synthetic_file) in line


def test_no_config_and_no_resume_is_a_usage_error(tmp_path):
    result = cli_in_process("distill", "--out", tmp_path / "run")
    assert result.returncode == 2 and "give a config file" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_teacher_on_a_class_subset_has_one_output_per_subset_class(synthetic_file, tmp_path):
    run = tmp_path / "subset"
    layout = read_layout(synthetic_file)
    names = layout.labels["label"].class_names
    with h5py.File(synthetic_file, "r") as handle:
        values = handle["labels"]["label"][()]
        labels = values[handle["splits"]["train"][()]]
        in_both = sorted(set(labels.tolist()) & set(values[handle["splits"]["test"][()]].tolist()))
    chosen = [names[i] for i in in_both[:3]][::-1]  # three classes with train and test scenes, reversed
    subset = f"task.class_subset=[{', '.join(chosen)}]"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", *SMALL,
                            "task.segmentation=null", subset)
    assert result.returncode == 0, result.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert card["labels"] == {"classes": "label", "segmentation": None, "class_subset": chosen}
    assert card["encoder"]["num_classes"] == 3
    kept = sum(names[value] in chosen for value in labels)
    assert card["data"]["num_samples"] == kept < len(labels)  # the other classes' scenes are left out
    # a KD student distils the subset teacher's three outputs
    student = tmp_path / "kd"
    result = cli_in_process("distill", SMOKE_DISTILL, "--out", student, f"data.path={synthetic_file}", *SMALL,
                            f"teacher.weights={run}", "teacher.encoder=null", "distill.name=kd",
                            "student.encoder.num_classes=3")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides, message", [
    (["task.class_subset=[cone, sofa]"], "task.class_subset: 'label' has no class 'sofa'; its classes are box,"),
    (["task.classes=null", "task.class_subset=[cone, box]"], "task.class_subset needs task.classes"),
])
def test_a_bad_class_subset_is_one_line(synthetic_file, tmp_path, overrides, message):
    out = tmp_path / "run"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", out, f"data.path={synthetic_file}", *SMALL,
                            *overrides)
    assert message in _fails_before_training(result, out)
