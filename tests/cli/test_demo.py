"""``crossmodal demo`` end to end at a tiny size: every step, results.json, the report, reruns and errors.

Whether CRD beats scratch is a claim about the full-size demo (about 11 minutes); it is checked by running
``make demo`` (see the README's results), not here.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import cli, error_line

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

TINY = ["--num", "120", "--size", "32", "--teacher-epochs", "1", "--student-epochs", "1", "--segment-epochs", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = cli("demo", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    return out, result


def test_every_step_reports_progress_and_the_table(demo):
    out, result = demo
    for step in range(1, 7):
        assert f"[{step}/6]" in result.stdout
    assert "CRD from RGB teacher" in result.stdout and "scratch (random init)" in result.stdout
    assert "CRD - scratch (points)" in result.stdout


def test_results_json_holds_the_headline_numbers_of_the_probe_and_segment_results(demo):
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"crd", "scratch"}
    for method in ("crd", "scratch"):
        probe = json.loads((out / "probe" / f"{method}.json").read_text())
        segment = json.loads((out / "segment" / method / "segment.json").read_text())
        assert probe["method"] == method and segment["method"] == method
        assert probe["random_init"] is (method == "scratch") and segment["random_init"] is (method == "scratch")
        embedding = next(row for row in probe["stages"] if row["stage"] == "embedding")
        assert results[method]["probe_top1"] == embedding["linear"]["top1"]
        assert results[method]["knn_top1"] == embedding["knn"]["top1"]
        assert results[method]["miou"] == segment["results"]["frozen"]["miou"]
        assert results[method]["pixel_acc"] == segment["results"]["frozen"]["pixel_acc"]
        for value in results[method].values():
            assert 0.0 <= value <= 1.0  # fractions, not percentages
        assert Path(segment["results"]["frozen"]["preview"]).is_file()
    # both students share the architecture and the data; only the initialisation differs
    crd, scratch = (json.loads((out / "probe" / f"{m}.json").read_text()) for m in ("crd", "scratch"))
    assert crd["checkpoint"] == scratch["checkpoint"] and crd["num_test"] == scratch["num_test"]


def test_the_runs_and_the_report_are_written(demo):
    out, _ = demo
    for run, export in (("teacher", "teacher.safetensors"), ("crd", "student.safetensors")):
        assert (out / run / export).is_file() and (out / run / "model_card.json").is_file()
    card = json.loads((out / "crd" / "model_card.json").read_text())
    assert card["distillers"] and card["modality"] == "depth"
    report = (out / "report" / "report.md").read_text()
    assert "crd" in report and "scratch" in report
    assert {"probe_linear.png", "segmentation_miou.png"} <= set(os.listdir(out / "report"))


def test_a_rerun_reuses_every_finished_step(demo):
    out, _ = demo
    before = (out / "results.json").read_text()
    again = cli("demo", "--out", out, *TINY)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reusing") == 7  # the data, both training runs, both probes and both segmentations
    assert "probe stage" not in again.stdout  # nothing probed again
    assert "epoch 1/1" not in again.stdout  # nothing trained again
    assert json.loads((out / "results.json").read_text()) == json.loads(before)


def test_an_interrupted_training_step_resumes_from_its_checkpoint(demo, tmp_path):
    out, _ = demo
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    (copy / "crd" / "model_card.json").unlink()  # as if stopped after its last checkpoint, before the export
    result = cli("demo", "--out", copy, *TINY)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and (copy / "crd" / "model_card.json").is_file()


def test_an_existing_data_file_of_other_options_is_one_line_error(demo, tmp_path):
    out, _ = demo
    other = tmp_path / "other"
    other.mkdir()
    os.link(out / "synthetic.h5", other / "synthetic.h5")
    result = cli("demo", "--out", other, *[a if a != "120" else "200" for a in TINY])
    assert result.returncode == 2
    line = error_line(result)
    assert "synthetic.h5" in line and "num=120" in line and "delete it" in line
    assert sorted(os.listdir(other)) == ["synthetic.h5"]  # nothing else started
