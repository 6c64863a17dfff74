"""Hostile YAML configs: duplicate keys, alias bombs, deep nesting and huge files are one line each, fast."""
from __future__ import annotations

import time

import pytest

from conftest import ROOT, cli, error_line
from crossmodal.config import schema
from crossmodal.config.schema import parse_override, read_yaml
from crossmodal.errors import ConfigError

SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"

MINIMAL_DISTILL = """\
data: {path: data.h5}
teacher: {modality: rgb}
student: {modality: depth, encoder: {name: test_resnet}}
train: {epochs: 2}
"""

# The YAML "billion laughs": 9 levels of 9 aliases of the level below, 9**9 strings once expanded.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{below}'] * 9)}]\n" for below, name in zip("abcdefgh", "bcdefghi"))


@pytest.fixture(scope="module", autouse=True)
def cli_imported(tmp_path_factory):
    """Run the CLI once (importing torch and all), so the timed tests time the config, not the imports."""
    folder = tmp_path_factory.mktemp("warm")
    assert cli("distill", folder / "absent.yaml", "--out", folder / "run").returncode == 2


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(call, *args) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def refused_by_distill(tmp_path, path, *overrides) -> str:
    """Run ``crossmodal distill`` as a user would; it must fail with code 2 and leave no run folder."""
    run = tmp_path / "run"
    result = cli("distill", path, "--out", run, *overrides)
    assert result.returncode == 2, result.stderr
    assert not run.exists()
    return error_line(result)


# ------------------------------------------------------------------------------------------ duplicate keys
def test_duplicate_top_level_key_names_both_lines(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL + "seed: 1\n" + "train: {epochs: 3}\n")
    line = refused_by_distill(tmp_path, path)
    assert line.endswith(f"{path}: key 'train' is given twice (lines 4 and 6)"), line


def test_duplicate_nested_key_is_a_dotted_path(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL + "optim:\n  lr: 0.1\n  momentum: 0.9\n\n  lr: 0.2\n")
    line = refused_by_distill(tmp_path, path)
    assert line.endswith(f"{path}: key 'optim.lr' is given twice (lines 6 and 9)"), line
    # in a list, the item is named; keys that collide once read (1 and 1.0) are duplicates too
    path = write(tmp_path, "l:\n  - {a: 1}\n  - {a: 1, b: 2, a: 3}\n", "list.yaml")
    assert config_error(read_yaml, path) == f"{path}: key 'l[1].a' is given twice (lines 3 and 3)"
    path = write(tmp_path, "m: {1: x, 1.0: y}\n", "numbers.yaml")
    assert config_error(read_yaml, path).startswith(f"{path}: key 'm.1.0' is given twice (lines 1 and 1)")


def test_a_key_overriding_a_merge_key_is_not_a_duplicate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = MINIMAL_DISTILL + "base: &base {lr: 0.1, momentum: 0.5}\n"
    path = write(tmp_path, text + "chained: &chained {<<: *base, lr: 0.2}\n"
                                  "optim:\n  <<: *chained\n  momentum: 0.8\n")
    data = read_yaml(path)
    assert data["optim"] == {"lr": 0.2, "momentum": 0.8} and data["chained"] == {"lr": 0.2, "momentum": 0.5}
    # and through the CLI: the merged optim section is read, the unknown helper key is what is refused
    line = refused_by_distill(tmp_path, path)
    assert f"{path}: unknown key 'base'" in line, line


def test_duplicate_key_inside_an_override_value(tmp_path):
    assert parse_override("student.encoder.options={drop_rate: 0.1}")[1] == {"drop_rate": 0.1}
    message = config_error(parse_override, "student.encoder.options={drop_rate: 0.1, drop_rate: 0.2}")
    assert message == ("override 'student.encoder.options={drop_rate: 0.1, drop_rate: 0.2}': key 'drop_rate' is "
                       "given twice")
    line = refused_by_distill(tmp_path, write(tmp_path, MINIMAL_DISTILL), "student.encoder.options={a: 1, a: 2}")
    assert line.endswith("override 'student.encoder.options={a: 1, a: 2}': key 'a' is given twice"), line


def test_resume_reads_the_run_config_through_the_same_loader(tmp_path):
    run = tmp_path / "old_run"
    run.mkdir()
    saved = write(run, MINIMAL_DISTILL + "seed: 1\nseed: 2\n", "config.yaml")
    result = cli("distill", "--resume", run)
    assert result.returncode == 2, result.stderr
    assert error_line(result).endswith(f"{saved}: key 'seed' is given twice (lines 5 and 6)")


# ------------------------------------------------------------------------------------------ aliases
def test_alias_bomb_is_refused_fast(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL + BOMB)
    start = time.perf_counter()
    line = refused_by_distill(tmp_path, path)
    assert time.perf_counter() - start < 2
    assert line.endswith(f"{path}: too many YAML aliases (more than {schema.MAX_ALIASES} once expanded); "
                         f"a config needs none or a few"), line
    # the same bomb as one override value
    value = "{" + BOMB.strip().replace("\n", ", ") + "}"
    start = time.perf_counter()
    assert config_error(parse_override, f"student.encoder.options={value}").endswith("too many YAML aliases "
        f"(more than {schema.MAX_ALIASES} once expanded); a config needs none or a few")
    assert time.perf_counter() - start < 2


def test_a_config_with_a_few_anchors_still_loads(tmp_path):
    path = write(tmp_path, "lr: &lr 0.1\noptim: {lr: *lr, betas: &betas [0.9, 0.99]}\n"
                           "other: {betas: *betas, also: *betas}\nsizes: &s {a: [1, 2]}\nagain: *s\n")
    assert read_yaml(path) == {"lr": 0.1, "optim": {"lr": 0.1, "betas": [0.9, 0.99]},
                               "other": {"betas": [0.9, 0.99], "also": [0.9, 0.99]},
                               "sizes": {"a": [1, 2]}, "again": {"a": [1, 2]}}
    # at the limit (expanded) still loads; one more is refused
    limit = schema.MAX_ALIASES
    many = write(tmp_path, "x: &x 1\ny: [" + ", ".join(["*x"] * limit) + "]\n", "many.yaml")
    assert len(read_yaml(many)["y"]) == limit
    path = write(tmp_path, "x: &x 1\ny: [" + ", ".join(["*x"] * (limit + 1)) + "]\n", "toomany.yaml")
    assert "too many YAML aliases" in config_error(read_yaml, path)


# ------------------------------------------------------------------------------------------ size and depth
def test_oversize_file_is_refused_without_parsing(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    path.write_text(MINIMAL_DISTILL + "junk:\n" + "- 1234567\n" * (2 * 2 ** 20 // 10), encoding="utf-8")
    size = path.stat().st_size
    assert size > 2 * 2 ** 20 - 100

    def no_parsing(*args, **kwargs):
        raise AssertionError("an oversize config was parsed")

    monkeypatch.setattr(schema, "_load_yaml", no_parsing)
    start = time.perf_counter()
    line = refused_by_distill(tmp_path, path)
    assert time.perf_counter() - start < 2
    assert line.endswith(f"{path}: {size / 1024:.0f} KiB is too large for a config (the limit is 256 KiB)"), line


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    path = write(tmp_path, "a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert config_error(read_yaml, path) == (f"{path}: nested too deeply (more than {schema.MAX_DEPTH} "
                                             f"levels of mappings and lists)")
    assert read_yaml(write(tmp_path, "a: " + "[" * 20 + "]" * 20 + "\n", "fine.yaml"))["a"]


def test_unbuildable_scalar_is_invalid_yaml_not_a_traceback(tmp_path):
    path = write(tmp_path, "seed: 2020-13-45\n")
    assert config_error(read_yaml, path) == f"{path}: not valid YAML (month must be in 1..12)"
