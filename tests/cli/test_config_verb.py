"""``crossmodal config list|show|copy``: the configs installed with the package, as a pip user reaches them, and
a shipped config's name taken where ``train-teacher`` and ``distill`` take a config file."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import cli, error_line

from crossmodal.config import CONFIGS, read_yaml

OWN = ["own_l_to_ab_distill", "own_l_to_ab_teacher", "own_rgb_to_depth_distill", "own_rgb_to_depth_teacher"]
INSTALLED = Path(str(resources.files("crossmodal") / "configs"))


def test_list_names_every_installed_config_with_what_it_trains():
    result = cli("config", "list")
    assert result.returncode == 0 and result.stderr == ""
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(path.stem for path in INSTALLED.glob("*.yaml")) and set(OWN) <= set(names)
    line = next(line for line in result.stdout.splitlines() if line.startswith("own_l_to_ab_teacher "))
    assert line.split(None, 1)[1] == ("L -> ab on your own images, step 1 of 2: a teacher on L (lightness) "
                                      "trained on their class labels")
    line = next(line for line in result.stdout.splitlines() if line.startswith("demo_teacher "))
    assert line.endswith("trained on the synthetic scenes' class and segmentation labels")  # over two lines


@pytest.mark.parametrize("name", ["own_rgb_to_depth_distill", "own_rgb_to_depth_distill.yaml"])
def test_show_prints_the_installed_file(name):
    result = cli("config", "show", name)
    assert result.returncode == 0
    assert result.stdout == (INSTALLED / "own_rgb_to_depth_distill.yaml").read_text()


def test_an_unknown_name_is_one_line_listing_the_shipped_ones():
    line = error_line(cli("config", "show", "own_l_to_a_teacher"))
    assert line.startswith("crossmodal config: error: no shipped config 'own_l_to_a_teacher'; shipped: ")
    assert all(name in line for name in OWN) and line.endswith("(crossmodal config list)")


def test_copy_writes_an_editable_file_that_loads(tmp_path):
    dest = tmp_path / "mine" / "teacher.yaml"
    result = cli("config", "copy", "own_l_to_ab_teacher", dest)
    assert result.returncode == 0 and result.stderr == f"wrote {dest}\n"
    assert dest.read_text() == (INSTALLED / "own_l_to_ab_teacher.yaml").read_text()
    config = CONFIGS["train-teacher"].load(dest)
    assert (config.model.modality, config.task.classes, config.task.segmentation) == ("lab_l", "label", None)
    assert [path.name for path in dest.parent.iterdir()] == ["teacher.yaml"]  # no temporary left


def test_copy_into_a_folder_keeps_the_name_and_never_overwrites_unasked(tmp_path):
    assert cli("config", "copy", "own_rgb_to_depth_teacher", tmp_path).returncode == 0
    dest = tmp_path / "own_rgb_to_depth_teacher.yaml"
    dest.write_text("edited: true\n")
    line = error_line(cli("config", "copy", "own_rgb_to_depth_teacher", tmp_path))
    assert line == f"crossmodal config: error: {dest}: exists already; choose another DEST or add --overwrite"
    assert dest.read_text() == "edited: true\n"
    assert cli("config", "copy", "own_rgb_to_depth_teacher", tmp_path, "--overwrite").returncode == 0
    assert read_yaml(dest)["task"]["segmentation"] == "seg13"


def test_the_training_verbs_take_a_shipped_configs_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the installed config is read
    line = error_line(cli("train-teacher", "own_l_to_ab_teacher", "--out", "run"))
    assert line == f"crossmodal train-teacher: error: {tmp_path / 'my_images.h5'}: no such data file (data.path)"
    line = error_line(cli("distill", "own_rgb_to_depth_distill.yaml", "--out", "run", "data.path=absent.h5"))
    assert line == (f"crossmodal distill: error: {tmp_path / 'runs' / 'rgb-teacher'}: no such teacher weight file "
                    f"(teacher.weights)")  # the installed config's teacher, checked before any data is read
    assert not (tmp_path / "run").exists()


def test_a_file_of_that_name_in_the_folder_wins_over_the_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own_l_to_ab_teacher").write_text(yaml.safe_dump({"data": {"path": "x.h5"}}))
    line = error_line(cli("train-teacher", "own_l_to_ab_teacher", "--out", "run"))
    assert line == ("crossmodal train-teacher: error: own_l_to_ab_teacher: missing key 'train.epochs' (number of "
                    "epochs)")  # the local file was read, not the installed one


def test_copy_to_a_place_that_cannot_hold_it_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    line = error_line(cli("config", "copy", "own_l_to_ab_teacher", tmp_path / "a_file" / "teacher.yaml"))
    assert line.startswith(f"crossmodal config: error: {tmp_path / 'a_file'}: cannot create this folder: ")
    assert [path.name for path in tmp_path.iterdir()] == ["a_file"]
