"""DKD, MLLD and C2KD through ``crossmodal distill`` as a user types it (issue 28): label-free (the teacher's
prediction stands in for the target class) and supervised (CE on the student's labels plus the distiller), and
the one-line refusals before any training: a teacher without a classifier, labels asked for and not given, an
unknown option, an out-of-range value or weight."""
from __future__ import annotations

import json

import pytest
from _run_helpers import SMOKE_DISTILL, cli_in_process
from conftest import error_line

NEW = ("dkd", "mlld", "c2kd")
ONE_EPOCH = ["train.epochs=1", "data.generate.num=96"]


def distill(tmp_path, synthetic_file, *overrides):
    return cli_in_process("distill", SMOKE_DISTILL, "--out", tmp_path / "run", f"data.path={synthetic_file}",
                          "data.generate=null", "train.epochs=1", *overrides)


@pytest.mark.parametrize("name", NEW)
def test_label_free_and_supervised_runs_train_and_record_the_distiller(name, synthetic_file, tmp_path):
    """Label-free: the student gets a classifier of the teacher's 10 classes and learns from the teacher alone;
    supervised: CE on the depth student's own labels is added (its classifier then comes from the labels)."""
    result = distill(tmp_path, synthetic_file, f"distill.name={name}", "student.encoder.num_classes=10")
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert list(card["distillers"]) == [name] and card["loss"]["ce"] == 0
    metrics = card["final_metrics"]
    assert f"train_{name}" in metrics and metrics[f"train_{name}/agreement"] >= 0
    supervised = cli_in_process("distill", SMOKE_DISTILL, "--out", tmp_path / "supervised",
                                f"data.path={synthetic_file}", "data.generate=null", "train.epochs=1",
                                f"distill.name={name}", "loss.ce=1.0", "loss.class_labels=label")
    assert supervised.returncode == 0, supervised.stderr
    card = json.loads((tmp_path / "supervised" / "model_card.json").read_text())
    assert card["loss"] == {"ce": 1.0, "class_labels": "label"}
    assert 0 <= card["final_metrics"]["eval_student_top1"] <= 1 and card["final_metrics"]["train_ce"] > 0


@pytest.mark.parametrize("name", NEW)
def test_a_teacher_without_a_classifier_is_one_line_naming_the_distiller(name, synthetic_file, tmp_path):
    result = distill(tmp_path, synthetic_file, f"distill.name={name}", "teacher.encoder.num_classes=0",
                     "student.encoder.num_classes=10")
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"crossmodal distill: error: distill.options.{name}: {name} needs classifier heads")
    assert "teacher (0)" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["dkd", "c2kd"])
def test_labels_asked_for_without_class_labels_is_one_line(name, synthetic_file, tmp_path):
    result = distill(tmp_path, synthetic_file, f"distill.name={name}", "student.encoder.num_classes=10",
                     f"distill.options.{name}={{target: labels}}")
    assert error_line(result) == (f"crossmodal distill: error: distill.options.{name}: {name}: 'target' is 'labels' "
                                  f"but the run has no class labels (set loss.class_labels)")
    assert result.returncode == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("distill.options.dkd={alpha: 1, gamma: 2}", "distill.options.dkd.gamma: 'dkd' has no such option; its options:"),
    ("distill.options.dkd={beta: -1}", "distill.options.dkd: dkd: 'beta' must be a finite number >= 0, got -1"),
    ("distill.options.mlld={temperatures: []}", "distill.options.mlld: mlld: 'temperatures' must be a non-empty "
                                                "list of finite positive numbers, got []"),
    ("distill.weights.c2kd=-0.5", "distill.weights.c2kd must be a number >= 0, got -0.5"),
])
def test_a_bad_option_or_weight_is_one_line_before_training(override, message, synthetic_file, tmp_path):
    name = override.split(".")[2].split("=")[0]
    result = distill(tmp_path, synthetic_file, f"distill.name={name}", "student.encoder.num_classes=10", override)
    assert result.returncode == 2
    assert error_line(result).startswith(f"crossmodal distill: error: {message}"), error_line(result)
    assert not (tmp_path / "run").exists()


def test_the_list_shows_the_three_with_a_description():
    listed = cli_in_process("distill", "--list-distillers").stdout.splitlines()
    for name in NEW:
        line = next(row for row in listed if row.split()[0] == name)
        assert len(line.split(None, 1)[1]) > 20
