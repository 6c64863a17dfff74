"""Mistakes of a user adapting a config to their own file, each one line naming what to type (issue 27, items 5
and 6): a label set the file lacks names the config key and its valid values; an override split at its ``=``
is shown joined."""
from __future__ import annotations

import pytest
from _run_helpers import SMOKE_DISTILL, SMOKE_TEACHER, cli_in_process
from conftest import error_line
from PIL import Image


@pytest.fixture(scope="module")
def images_file(tmp_path_factory):
    """A file from `crossmodal prepare images` (class labels, no segmentation): 2 classes x 2 images per split."""
    root = tmp_path_factory.mktemp("images")
    for split in ("train", "test"):
        for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (root / "tree" / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), colour).save(root / "tree" / split / label / f"{i}.png")
    out = root / "images.h5"
    assert cli_in_process("prepare", "images", "--src", root / "tree", "--out", out).returncode == 0
    return out


def test_a_segmentation_set_the_file_lacks_names_the_key_and_null(images_file, tmp_path):
    result = cli_in_process("train-teacher", "own_l_to_ab_teacher", "--out", tmp_path / "run",
                            f"data.path={images_file}", "task.segmentation=seg")
    assert error_line(result) == (f"crossmodal train-teacher: error: {images_file}: task.segmentation: no label set "
                                  f"'seg'; set task.segmentation=null (no segmentation): the file has no "
                                  f"segmentation label set")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb, config, override, key, meaning, valid", [
    ("train-teacher", SMOKE_TEACHER, "task.classes=labels", "task.classes", "no image classes", "['label']"),
    ("train-teacher", SMOKE_TEACHER, "task.segmentation=seg13", "task.segmentation", "no segmentation", "['seg']"),
    ("distill", SMOKE_DISTILL, "loss.class_labels=labels", "loss.class_labels", "no class labels", "['label']"),
])
def test_a_label_set_the_file_lacks_lists_the_sets_of_its_kind(verb, config, override, key, meaning, valid,
                                                                 synthetic_file, tmp_path):
    result = cli_in_process(verb, config, "--out", tmp_path / "run", f"data.path={synthetic_file}", override)
    name = override.split("=")[1]
    assert error_line(result) == (f"crossmodal {verb}: error: {synthetic_file}: {key}: no label set '{name}'; set "
                                  f"{key}=null ({meaning}) or to one of {valid}")


@pytest.mark.parametrize("verb, config", [("train-teacher", SMOKE_TEACHER), ("distill", SMOKE_DISTILL)])
def test_an_override_split_at_its_equals_sign_is_shown_joined(verb, config, tmp_path):
    result = cli_in_process(verb, config, "--out", tmp_path / "run", "train.epochs", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(f"usage: crossmodal {verb} ")  # the verb's usage, not the top's
    assert error_line(result) == (f"crossmodal {verb}: error: unrecognized arguments: train.epochs 1; a config "
                                  f"override is one word, key=value: train.epochs=1")
    assert not (tmp_path / "run").exists()
    # before the options, argparse takes both words as overrides: the same hint
    result = cli_in_process(verb, config, "train.epochs", "1", "--out", tmp_path / "run")
    assert result.returncode == 2 and result.stderr.splitlines()[0].startswith(f"usage: crossmodal {verb} ")
    assert error_line(result) == (f"crossmodal {verb}: error: override 'train.epochs' is not of the form "
                                  f"key.sub=value; a config override is one word, key=value: train.epochs=1")
    assert not (tmp_path / "run").exists()


def test_other_unrecognized_arguments_get_no_override_hint(tmp_path):
    result = cli_in_process("train-teacher", SMOKE_TEACHER, "--out", tmp_path / "run", "--epochs", "1")
    assert error_line(result) == "crossmodal train-teacher: error: unrecognized arguments: --epochs 1"


@pytest.mark.parametrize("verb, config, override, key, unset", [
    ("train-teacher", "own_l_to_ab_teacher", "data.eval_split=val", "data.eval_split",
     "; or data.eval_split=null to train without evaluating"),
    ("train-teacher", "own_l_to_ab_teacher", "data.split=training", "data.split", ""),
])
def test_a_split_the_file_lacks_names_the_key(images_file, tmp_path, verb, config, override, key, unset):
    """Before: `no split 'val'; it has [...]`, which named neither the setting nor how to go without one."""
    result = cli_in_process(verb, config, "--out", tmp_path / "run", f"data.path={images_file}", override,
                            "train.batch_size=2")
    split = override.split("=")[1]
    assert error_line(result) == (f"crossmodal {verb}: error: {images_file}: no split '{split}' ({key}); it has "
                                  f"['test', 'train']{unset}")
    assert not (tmp_path / "run").exists()
