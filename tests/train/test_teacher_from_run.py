"""``teacher.weights`` a train-teacher run folder: the teacher's modality and encoder come from its model card
unless the config sets them, and a ``teacher.modality`` other than the run's is one line naming both."""
from __future__ import annotations

import json

import pytest
import yaml
from _run_helpers import SMOKE_DISTILL, SMOKE_TEACHER, cli_in_process
from conftest import error_line

pytestmark = pytest.mark.slow  # trains a teacher and a student (seconds)

SMALL = ["train.batch_size=8", "train.epochs=1", "train.progress=false"]


@pytest.fixture(scope="module")
def lab_l_teacher(synthetic_file, tmp_path_factory):
    """A one-epoch classes-only teacher trained on lab_l (one channel)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", run, f"data.path={synthetic_file}", *SMALL,
                            "task.segmentation=null", "data.augment=false", "model.modality=lab_l")
    assert result.returncode == 0, result.stderr
    return run


def _distill(config, out, synthetic_file, teacher, *extra):
    return cli_in_process("distill", config, "--out", out, f"data.path={synthetic_file}", *SMALL,
                          f"teacher.weights={teacher}", "distill.options.crd.num_negatives=16", *extra)


def test_a_config_without_teacher_modality_takes_the_runs(lab_l_teacher, synthetic_file, tmp_path):
    tree = yaml.safe_load(SMOKE_DISTILL.read_text())
    del tree["teacher"]["modality"], tree["teacher"]["encoder"]
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = tmp_path / "student"
    result = _distill(config, run, synthetic_file, lab_l_teacher)
    assert result.returncode == 0, result.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert card["teacher"]["modality"] == "lab_l" and card["teacher"]["encoder"]["in_chans"] == 1
    assert card["teacher"]["weights"] == str(lab_l_teacher / "teacher.safetensors")
    assert card["teacher"]["encoder"]["num_classes"] == 10  # the card's encoder, classifier included
    assert card["modality"] == "depth"


def test_a_teacher_modality_other_than_the_runs_is_one_line(lab_l_teacher, synthetic_file, tmp_path):
    run = tmp_path / "student"
    result = _distill(SMOKE_DISTILL, run, synthetic_file, lab_l_teacher, "teacher.encoder=null")  # rgb explicitly
    assert result.returncode == 2
    assert error_line(result) == (f"crossmodal distill: error: teacher.modality: rgb, but the teacher run "
                                  f"{lab_l_teacher} was trained on lab_l; drop teacher.modality or set it to lab_l")
    assert not run.exists()


def test_adapt_input_allows_another_modality(lab_l_teacher, synthetic_file, tmp_path):
    """With teacher.adapt_input the lab_l teacher's first convolution is adapted to rgb's three channels."""
    run = tmp_path / "student"
    result = _distill(SMOKE_DISTILL, run, synthetic_file, lab_l_teacher, "teacher.encoder=null",
                      "teacher.adapt_input=true")
    assert result.returncode == 0, result.stderr
    assert "teacher.adapt_input:" in result.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert card["teacher"]["modality"] == "rgb" and card["teacher"]["encoder"]["in_chans"] == 3


def test_without_a_run_folder_the_teacher_modality_is_required(synthetic_file, tmp_path):
    tree = yaml.safe_load(SMOKE_DISTILL.read_text())
    del tree["teacher"]["modality"]
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(tree))
    result = cli_in_process("distill", config, "--out", tmp_path / "run", f"data.path={synthetic_file}", *SMALL)
    assert error_line(result) == ("crossmodal distill: error: teacher.modality is missing (it may be omitted only "
                                  "when teacher.weights is a train-teacher run folder)")
