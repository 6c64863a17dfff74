"""The experiment scripts end to end at their smallest: the real NYU frames through RGB -> depth, and CIFAR-10
images through L -> ab (a subset of the distillers), each ending in its report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_rgb_to_depth_runs_the_real_nyu_frames_end_to_end(shared_data, tmp_path):
    out = tmp_path / "nyu_mini"
    result = run_script("rgb_to_depth.py", "--nyu-mini", shared_data / "nyu_mini", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    # no image-level classes in these frames: no teacher logits for KD and CRD+KD to distil
    skipped = next(line for line in result.stdout.splitlines() if "skipped" in line)
    assert "crd+kd" in skipped and " kd" in skipped
    for method in ("fitnet", "at", "crd", "crd-bank", "supervised", "scratch"):
        segment = json.loads((out / f"segment-{method}-s0" / "segment.json").read_text())
        assert segment["labels"] == "seg13" and set(segment["results"]) == {"finetune", "frozen"}
        assert segment["random_init"] is (method == "scratch")
    report = (out / "report" / "report.md").read_text()
    assert "seg13" in report and "crd-bank" in report
    again = run_script("rgb_to_depth.py", "--nyu-mini", shared_data / "nyu_mini", "--out", out, "--device", "cpu")
    assert again.returncode == 0 and "epoch 1/" not in again.stdout  # every finished step reused


def test_l_to_ab_trains_a_luminance_teacher_and_probes_chrominance_students(tmp_path):
    out = tmp_path / "l_to_ab"
    result = run_script("l_to_ab.py", "--preset", "smoke", "--methods", "kd", "crd", "--out", out,
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = json.loads((out / "teacher-s0" / "model_card.json").read_text())
    assert teacher["modality"] == "lab_l"
    for method in ("kd", "crd", "supervised", "scratch"):
        probe = json.loads((out / "results" / f"probe-{method}-s0.json").read_text())
        assert probe["modality"] == "lab_ab" and probe["method"] == method and probe["labels"] == "label"
    assert (out / "report" / "probe_linear.png").is_file()
