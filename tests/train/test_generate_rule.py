"""A config's ``data.generate`` applies only to the ``data.path`` written beside it (issue 27, item 1): a typo in
``data.path`` on the command line is one line naming the key, never a run on generated synthetic scenes."""
from __future__ import annotations

import pytest
from _run_helpers import SMOKE_DISTILL, SMOKE_TEACHER, cli_in_process
from conftest import error_line

from crossmodal.config import DistillRunConfig, TeacherRunConfig
from crossmodal.errors import ConfigError


@pytest.mark.parametrize("verb, config", [("train-teacher", SMOKE_TEACHER), ("distill", SMOKE_DISTILL)])
def test_a_mistyped_data_path_is_one_line_and_generates_nothing(verb, config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli_in_process(verb, config, "--out", "runs/t", "data.path=cifr10.h5", "train.epochs=1")
    assert result.returncode == 2
    assert error_line(result) == (f"crossmodal {verb}: error: data.path: cifr10.h5 does not exist (data.generate, "
                                  f"set in {config.name}, applies only to the path written there)")
    assert "generating" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no data file, no run folder


def test_a_data_path_of_an_existing_file_drops_the_written_generator(synthetic_file):
    config = TeacherRunConfig.load(SMOKE_TEACHER, [f"data.path={synthetic_file}"])
    assert config.data.path == str(synthetic_file) and config.data.generate is None  # config.yaml says so too


@pytest.mark.parametrize("given", ["data.generate.num=64", "data.generate={num: 64, size: 32}"])
def test_a_generator_given_on_the_command_line_applies_to_the_path_given_there(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = DistillRunConfig.load(SMOKE_DISTILL, ["data.path=mine.h5", given])
    assert config.data.path == str(tmp_path / "mine.h5") and config.data.generate["num"] == 64


def test_the_written_path_spelled_again_keeps_its_generator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TeacherRunConfig.load(SMOKE_TEACHER, ["data.path=./runs/smoke/synthetic.h5"])
    assert config.data.generate == {"num": 320, "size": 32, "seed": 0}


def test_a_path_and_generator_written_together_in_a_users_file_generate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text(SMOKE_TEACHER.read_text().replace("runs/smoke/synthetic.h5", "made_here.h5"))
    assert TeacherRunConfig.load(mine).data.generate == {"num": 320, "size": 32, "seed": 0}
    with pytest.raises(ConfigError, match=r"^data.path: other.h5 does not exist \(data.generate, set in mine.yaml"):
        TeacherRunConfig.load(mine, ["data.path=other.h5"])


def test_the_readme_states_the_rule_with_the_line_its_example_prints(tmp_path, monkeypatch):
    from conftest import ROOT

    text = " ".join((ROOT / "README.md").read_text().split())
    assert ("applies only to the `data.path` written beside it in the same YAML file. A `data.path` given on the "
            "command line must name an existing file unless `data.generate` is given on the command line too") in text
    command = "crossmodal train-teacher experiments/configs/smoke_teacher.yaml data.path=cifr10.h5 --out runs/t"
    quoted = text.split(f"`{command}` says `", 1)[1].split("`", 1)[0]
    monkeypatch.chdir(tmp_path)
    result = cli_in_process(*command.replace("experiments/", f"{ROOT}/experiments/").split()[1:])
    assert error_line(result) == f"crossmodal train-teacher: error: {quoted}"
