"""The README's shell recipes run as written, in the README's order, in one folder: each ``crossmodal ...`` line
of every ```bash block, its optional ``[...]`` parts included, through the command's entry point (in this
process, to spare an interpreter start per line), on tiny stand-ins for the inputs it names (a fixture NYU
.mat and STL-10 release, the real NYU frames and CIFAR-10 zip of ../shared). Only the amount of work
shrinks, by the substitutions in ``TINY``, each of which must still match the README."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, cli

pytestmark = pytest.mark.slow  # trains a teacher and a student, probes and segments them

README = (ROOT / "README.md").read_text()

# README text -> what runs here: every flag stays, only the amount of work shrinks.
TINY = {
    "--size 240 320": "--size 24 32",
    "--max-unlabeled 20000": "--max-unlabeled 3",
    "--max-per-class 500": "--max-per-class 10",
    "--num 4000 --size 64": "--num 96 --size 32 --workers 1",
    "--labels seg": "--labels seg --epochs 1",
    # "Your own data": one epoch, and batches that fit the tiny NYU file's 3 training frames
    "--out runs/l-teacher": "--out runs/l-teacher train.epochs=1",
    "--out runs/ab-student": "--out runs/ab-student train.epochs=1",
    "--out runs/rgb-teacher": "--out runs/rgb-teacher train.epochs=1 train.batch_size=2",
    "--out runs/depth-student": "--out runs/depth-student train.epochs=1 train.batch_size=2",
    "--out runs/pairs-student": "--out runs/pairs-student train.epochs=1 train.batch_size=2",
}
# Lines of the shell blocks that are not run here, and why.
NOT_RUN = {
    "make demo": "the whole demo takes minutes; tests/cli/test_demo.py runs it at a small size",
    "make test": "this suite",
    "make test-kernels": "reruns this suite's numerics tests under each CPU kernel level; CI runs it",
    ". .venv/bin/activate": "changes the calling shell only; the next line runs the installed command",
    "tensorboard --logdir runs/": "a server that runs until stopped; the events it shows are read back with "
                                  "TensorBoard's own reader in tests/train/test_tensorboard.py and test_demo.py",
}
# What the recipes say they make (in their comments or arguments), checked once all have run.
PRODUCTS = ["nyu.h5", "stl10.h5", "pairs.h5", "pairs_csv.h5", "pairs_split.h5", "cifar10.h5", "synthetic.h5",
            "grid.png", "teachers/lite0/model_card.json", "teachers/lite0-l/model_card.json",
            "teachers/r18/model_card.json", "runs/lite0-crd/config.yaml",
            "runs/teacher/config.yaml", "runs/student/config.yaml", "runs/student/tb/events.out.tfevents.crossmodal", "runs/student/probe.json",
            "runs/scratch-1/probe.json", "runs/student/segment-seg-both", "runs/report/report.md",
            "runs/report/report.json", "runs/report/segmentation_miou.png",
            "l_teacher.yaml", "runs/l-teacher/teacher.safetensors", "runs/ab-student/student.safetensors",
            "runs/ab-student/probe.json", "runs/rgb-teacher/teacher.safetensors",
            "runs/depth-student/student.safetensors", "runs/pairs-student/student.safetensors"]


def readme_commands(text: str = README) -> list[str]:
    """Every command line of the README's ```bash blocks, in order: continuation lines joined, comments
    dropped, optional ``[...]`` parts kept without their brackets."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\[(--[^\]]*)\]", r"\1", block.replace("\\\n", " "))  # [--flag value] -> --flag value
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(shlex.quote(word) for word in words))
    return commands


def _load(name: str):
    """A fixture writer from the converters' own tests (tests/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(folder: Path, shared: Path) -> None:
    """The inputs the recipes name, in ``folder``: tiny fixtures, or links to the real data in ../shared."""
    nyu = _load("test_nyu")
    nyu.write_mat(folder / "nyu_depth_v2_labeled.mat", 6, 12, 16)
    nyu.write_meta(folder / "nyu_meta", 6)
    _load("test_stl10").write_release(folder / "stl10_binary")
    (folder / "my_pairs").symlink_to(shared / "nyu_mini")
    ids = sorted(name[:-len("_rgb.png")] for name in os.listdir(shared / "nyu_mini") if name.endswith("_rgb.png"))
    (folder / "index.csv").write_text("id,rgb,depth\n" + "".join(
        f"{i},my_pairs/{i}_rgb.png,my_pairs/{i}_depth.png\n" for i in ids))
    (folder / "cifar10-jpeg.zip").symlink_to(shared / "cifar10" / "cifar10-jpeg.zip")
    (folder / "experiments").symlink_to(ROOT / "experiments")
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "resnet18.pth")  # a user's checkpoint


def test_readme_commands_parse_continuations_comments_and_options():
    text = "```bash\n# a comment\ncrossmodal a --x 1 [--y 2]   # why\ncrossmodal b \\\n    k=v 'q=[1, 2]'\n```\n"
    assert readme_commands(text) == ["crossmodal a --x 1 --y 2", "crossmodal b k=v 'q=[1, 2]'"]


def test_no_command_hides_in_another_kind_of_block():
    for language, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S):
        if language != "bash":
            assert not re.search(r"^(crossmodal|\.venv/bin/crossmodal) ", body, re.M), \
                f"a ```{language or '(plain)'} block holds a command: make it ```bash so that it is run"


def test_every_readme_shell_line_is_run_or_said_why_not():
    commands = readme_commands()
    assert all(command in NOT_RUN or command.split()[0] in ("crossmodal", ".venv/bin/crossmodal")
               for command in commands), commands
    assert set(NOT_RUN) <= set(commands), "a line NOT_RUN explains is gone from the README"
    for readme_text in TINY:
        assert sum(readme_text in command for command in commands) == 1, f"TINY's {readme_text!r} no longer matches"


def test_readme_shell_recipes_run_as_written(tmp_path, shared_data, monkeypatch):
    _inputs(tmp_path, shared_data)
    monkeypatch.chdir(tmp_path)  # the recipes' relative paths
    for command in readme_commands():
        if command in NOT_RUN:
            continue
        for readme_text, tiny in TINY.items():
            command = command.replace(readme_text, tiny)
        result = cli(*shlex.split(command)[1:])  # the entry point, in this process: no interpreter start per line
        assert result.returncode == 0, f"README: {command}\n{result.stderr[-3000:]}"
    missing = [product for product in PRODUCTS if not (tmp_path / product).exists()]
    assert not missing, f"the recipes did not make {missing}"
