"""``crossmodal probe`` end to end on the smoke distillation: the JSON report, the table and one-line errors."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, cli, error_line

SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, Path]:
    """A finished smoke distillation (CRD, RGB teacher -> depth student) and its synthetic file."""
    folder = tmp_path_factory.mktemp("probe")
    data, run = folder / "s.h5", folder / "run"
    result = cli("distill", SMOKE_DISTILL, "--out", run, f"data.path={data}", "data.generate.num=160",
                 "train.epochs=1", "train.progress=false")
    assert result.returncode == 0, result.stderr
    return run, data


def test_probe_writes_json_and_table(smoke, tmp_path):
    run, data = smoke
    out = tmp_path / "p.json"
    result = cli("probe", "--checkpoint", run, "--data", data, "--json", out, "--seed", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["format"] == "crossmodal-probe/1"
    assert report["method"] == "crd" and report["random_init"] is False and report["seed"] == 0  # the run's seed
    assert report["modality"] == "depth" and report["labels"] == "label"
    assert (report["train_split"], report["test_split"], report["holdout_fraction"]) == ("train", "test", 0.2)
    assert report["checkpoint"] == str(run) and report["data"] == str(data)
    assert report["num_train"] + report["num_test"] <= 160 and report["num_classes"] >= 2
    assert 0 < report["chance"] <= 1
    names = [stage["stage"] for stage in report["stages"]]
    assert names == ["0", "1", "2", "3", "4", "embedding"]
    for stage in report["stages"]:
        assert stage["pool"] == "avg" and 0 < stage["dim"] <= 8192
        assert (stage["pooled_size"] is None) == (stage["stage"] == "embedding")
        assert 0 <= stage["linear"]["top1"] <= 1 and 0 <= stage["linear"]["holdout_top1"] <= 1
        assert stage["linear"]["solver"] == "sklearn" and set(stage["linear"]["chosen"]) == {"C"}
        assert 0 <= stage["knn"]["top1"] <= 1 and set(stage["knn"]["chosen"]) == {"k", "temperature"}
    lines = result.stdout.splitlines()
    assert "linear" in lines[1] and "kNN" in lines[1]
    assert lines[-2].split()[0] == "embedding" and f"written to {out}" == lines[-1]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left


def test_random_init_is_the_scratch_baseline(smoke, tmp_path):
    run, data = smoke
    out = tmp_path / "scratch.json"
    result = cli("probe", "--checkpoint", run / "student.safetensors", "--data", data, "--modality", "depth",
                 "--random-init", "--seed", "5", "--stages", "-1", "--pool", "max", "--pooled-size", "2",
                 "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["method"] == "scratch" and report["random_init"] is True and report["seed"] == 5
    assert [(s["stage"], s["pool"], s["pooled_size"]) for s in report["stages"]] == [
        ("4", "max", 2), ("embedding", "max", None)]
    assert report["stages"][0]["dim"] == 4 * report["stages"][1]["dim"]


@pytest.mark.parametrize("args, message", [
    (("--labels", "nope"), "no class label set 'nope'; it has ['label']"),
    (("--modality", "rgb"), "--modality rgb has 3 channels, the encoder"),
    (("--modality", "thermal"), "modality 'thermal' is not defined; this file offers"),
    (("--test-split", "val"), "no split 'val'; it has"),
    (("--stages", "7"), "--stages: no stage 7"),
    (("--device", "bogus"), "device 'bogus' is not a device name"),
    (("--test-split", "train"), "--train-split and --test-split are both 'train'"),
])
def test_one_line_errors(smoke, args, message):
    run, data = smoke
    line = error_line(cli("probe", "--checkpoint", run, "--data", data, *args))
    assert line.startswith("crossmodal probe: error:") and message in line, line


def test_missing_checkpoint(tmp_path, smoke):
    line = error_line(cli("probe", "--checkpoint", tmp_path / "absent", "--data", smoke[1]))
    assert "no such run folder or weight file" in line


def test_an_unwritable_json_is_one_line_before_any_work(smoke):
    run, data = smoke
    line = error_line(cli("probe", "--checkpoint", run, "--data", data, "--json", data / "sub" / "p.json"))
    assert f"{data / 'sub'}: cannot create this folder" in line, line
