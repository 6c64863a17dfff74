"""The scripts in data_prep/ as a user types them: each is ``crossmodal prepare SOURCE`` under another name."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from crossmodal import data_prep
from crossmodal.data.format import read_layout


def test_every_converter_has_a_script_and_data_prep_is_no_package():
    assert sorted(path.stem for path in (ROOT / "data_prep").glob("*.py")) == sorted(data_prep.CONVERTERS)
    assert not (ROOT / "data_prep" / "__init__.py").exists()


def test_the_synthetic_script_writes_a_readable_file(tmp_path):
    """Run from another folder, with worker processes (which re-import the script without running it again)."""
    out = tmp_path / "x.h5"
    result = subprocess.run(
        [sys.executable, str(ROOT / "data_prep" / "synthetic.py"), "--out", str(out), "--num", "8", "--size", "16",
         "--workers", "2"], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    layout = read_layout(out)
    assert layout.num_samples == 8 and set(layout.modalities) == {"rgb", "depth", "raw_depth"}
    assert layout.splits["train"] + layout.splits["test"] == 8


def test_a_script_reports_usage_errors_as_the_command_does(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "data_prep" / "nyu.py")], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: crossmodal prepare nyu") and "--mat" in result.stderr
