"""The command line as a user types it: help, inspect (text, JSON, preview), interrupted conversions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest

from conftest import ROOT, error_line, run_cli
from crossmodal import data_prep


@pytest.mark.parametrize("verb", [[], ["prepare"], ["inspect"], ["distill"]] + [["prepare", n] for n in data_prep.CONVERTERS])
def test_help_is_complete(verb):
    result = run_cli(*verb, "--help", check=True)
    assert result.stdout.startswith("usage: crossmodal")
    if verb[:1] == ["prepare"] and len(verb) == 2:
        assert "--out" in result.stdout
    if not verb:
        assert "prepare" in result.stdout and "inspect" in result.stdout


def test_inspect_text_json_and_preview(synthetic_file, tmp_path):
    text = run_cli("inspect", synthetic_file, check=True).stdout
    for expected in ("format version 2", "48 samples", "raw_depth", "holes", "label ", "class, 10 classes",
                     "segmentation, 13 classes", "splits: ", "converter: data_prep.synthetic"):
        assert expected in text
    preview = tmp_path / "grid.png"
    summary = json.loads(run_cli("inspect", synthetic_file, "--json", "--preview", preview, check=True).stdout)
    assert summary["format_version"] == 2 and summary["num_samples"] == 48
    assert summary["modalities"]["depth"]["codec"].startswith("blosc lz4") and summary["modalities"]["depth"]["checksum"]
    assert summary["modalities"]["rgb"]["shape"] == [48, 32, 32, 3]
    assert 0 < summary["modalities"]["raw_depth"]["hole_fraction"] < 0.3
    assert summary["modalities"]["depth"]["hole_fraction"] == 0
    assert sum(summary["labels"]["label"]["counts"].values()) == 48
    assert summary["splits"]["train"] + summary["splits"]["test"] == 48
    assert summary["provenance"]["options"]["seed"] == 1
    grid = cv2.imread(str(preview))
    assert grid is not None and grid.shape[0] > 3 * 96 and grid.shape[1] >= 2 * 4 * 96  # 6 samples, 2 to a line


def test_usage_errors(tmp_path):
    assert "must be two integers in 1..16384" in error_line(
        run_cli("prepare", "images", "--src", tmp_path, "--out", tmp_path / "x.h5", "--size", 0, 4))
    assert "its folder does not exist" in error_line(
        run_cli("prepare", "synthetic", "--out", tmp_path / "absent" / "x.h5", "--num", 4))
    result = run_cli("prepare", "kinect", "--out", tmp_path / "x.h5")
    assert result.returncode == 2 and "invalid choice: 'kinect'" in result.stderr


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_conversion_leaves_nothing_at_out(tmp_path, how):
    out = tmp_path / "big.h5"
    process = subprocess.Popen(
        [sys.executable, "-m", "crossmodal", "prepare", "synthetic", "--out", str(out), "--num", "20000",
         "--size", "64", "--workers", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    deadline = time.time() + 60
    while not list(tmp_path.glob(".big.h5.tmp-*")) and time.time() < deadline:
        time.sleep(0.1)
    temporary = list(tmp_path.glob(".big.h5.tmp-*"))
    assert temporary, "the conversion never started writing"
    first_size = temporary[0].stat().st_size
    while temporary[0].stat().st_size == first_size and time.time() < deadline:  # rows are being written
        time.sleep(0.05)
    assert temporary[0].stat().st_size > first_size, "the conversion never wrote a row"
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert not out.exists()
    if how == signal.SIGINT:  # a catchable interruption also removes the temporary file
        assert not list(tmp_path.iterdir())
        assert "interrupted" in stderr.decode()


def test_inspect_argument_errors(synthetic_file, tmp_path):
    for flag in ("--max-rows", "--preview-samples"):
        result = run_cli("inspect", synthetic_file, flag, 0)
        assert result.returncode == 2 and "must be a positive integer" in result.stderr
    assert "is a folder; --preview takes the path of a .png file" in error_line(
        run_cli("inspect", synthetic_file, "--preview", tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, expected", [
    (["--num", 5, "--size", 100000], "--size in 16..1024"),
    (["--num", 50, "--test-fraction", "nan"], "--test-fraction must be a number in (0, 1)"),
    (["--num", 2, "--test-fraction", 0.9], "leaves a split empty"),
])
def test_synthetic_argument_errors(tmp_path, args, expected):
    assert expected in error_line(run_cli("prepare", "synthetic", "--out", tmp_path / "s.h5", *args))
    assert list(tmp_path.iterdir()) == []


def test_hdf5_that_is_not_ours(tmp_path):
    import h5py
    import numpy as np
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["images"] = np.zeros((2, 3))
    assert "not a crossmodal-paired file" in error_line(run_cli("inspect", tmp_path / "other.h5"))
    with h5py.File(tmp_path / "odd.h5", "w") as handle:
        handle.attrs.update(format="crossmodal-paired", format_version=1, num_samples=2)
        handle["modalities"] = np.zeros((2, 3))
    assert "'/modalities' must be a group" in error_line(run_cli("inspect", tmp_path / "odd.h5"))


def test_distill_lists_the_registered_distillers():
    lines = run_cli("distill", "--list-distillers", check=True).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd",
                                                   "crd+kd", "dkd", "mlld", "c2kd"]
    assert lines[0] == "kd      Knowledge distillation on softened logits (Hinton et al.)."
    assert "give a config file (or --resume RUN_DIR)" in error_line(run_cli("distill"))
