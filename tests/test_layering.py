"""The package's layers (docs/architecture.md): no import from a lower layer to a higher one, no train <-> eval
imports, no data -> data_prep import, and no import cycle, checked on the source by
experiments/architecture_report.py (the same code prints the figures)."""
from __future__ import annotations

import importlib.util
import sys
import textwrap

from conftest import ROOT


def load_report_module():
    spec = importlib.util.spec_from_file_location("architecture_report", ROOT / "experiments" / "architecture_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_package_imports_only_downwards_and_has_no_cycle():
    report = load_report_module().analyse(str(ROOT))
    assert len(report.modules) > 80  # it did find the package
    assert report.upward == [], "imports from a lower layer to a higher one: " + ", ".join(
        f"{a} -> {b}" for a, b in report.upward)
    assert report.cycles == [], f"import cycles: {report.cycles}"


def write_tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_check_finds_upward_imports_sibling_imports_and_cycles(tmp_path):
    """What the old tree had: eval reaching into train, a converter importing the CLI, a lazy registry circle."""
    write_tree(tmp_path, {
        "crossmodal/__init__.py": "",
        "crossmodal/errors.py": "",
        "crossmodal/cli/__init__.py": "",
        "crossmodal/cli/arguments.py": "",
        "crossmodal/data_prep/__init__.py": "",
        "crossmodal/data_prep/images.py": "from crossmodal.cli.arguments import positive_int\n",
        "crossmodal/train/__init__.py": "",
        "crossmodal/train/run.py": "from crossmodal.errors import ConfigError\n",
        "crossmodal/eval/__init__.py": "",
        "crossmodal/eval/probe.py": "def device():\n    from crossmodal.train.run import resolve_device\n",
        "crossmodal/distill/__init__.py": "",
        "crossmodal/distill/registry.py": "def load():\n    import crossmodal.distill.library\n",
        "crossmodal/distill/library.py": "from crossmodal.distill import kd\n",
        "crossmodal/distill/kd.py": "from crossmodal.distill.registry import register\n",
        "crossmodal/engine/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                         "    from crossmodal.train import run\n",
    })
    report = load_report_module().analyse(str(tmp_path))
    assert sorted(report.upward) == [("crossmodal.data_prep.images", "crossmodal.cli.arguments"),
                                     ("crossmodal.eval.probe", "crossmodal.train.run")]
    assert report.cycles == [["crossmodal.distill.kd", "crossmodal.distill.library", "crossmodal.distill.registry"]]
