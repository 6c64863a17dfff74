"""Training configs: defaults, types, overrides and their one-line errors, against the real schemas."""
import os

import pytest

from crossmodal.errors import ConfigError
from crossmodal.engine.checkpoint import config_differences
from crossmodal.config.schema import Field, assign_override, flatten, load_config, parse_override, positive, validate
from crossmodal.config import RESUME_MAY_CHANGE, SCHEMAS

DISTILL = SCHEMAS["distill"]
TEACHER = SCHEMAS["train-teacher"]

MINIMAL_DISTILL = """\
data: {path: data.h5}
teacher: {modality: rgb}
student: {modality: depth, encoder: {name: test_resnet}}
train: {epochs: 2}
"""

SMALL = {
    "count": Field("int", 3),
    "rate": positive("float", 0.5),
    "flag": Field("bool", False),
    "mode": Field("str", "a", choices=("a", "b")),
    "maybe": Field("int", None, nullable=True),
    "names": Field("list:str", []),
    "sizes": Field("list:int", None, nullable=True, check=(lambda v: v > 0, "positive sizes")),
    "inner": {"need": Field("str", help="a required thing"), "opts": Field("mapping", {})},
}


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def distill(tmp_path, *overrides, text=MINIMAL_DISTILL):
    return load_config(write(tmp_path, text), DISTILL, overrides)


# ------------------------------------------------------------------------------------------ defaults and types
def test_defaults_are_filled_from_the_real_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = distill(tmp_path)
    assert config["seed"] == 0 and config["device"] == "auto" and config["deterministic"] is False
    assert config["optim"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                               "weight_decay": 5e-4, "betas": [0.9, 0.999]}
    assert config["schedule"]["name"] == "cosine" and config["schedule"]["milestones"] == []
    assert config["train"]["batch_size"] == 64 and config["train"]["clip_grad_norm"] is None
    assert config["teacher"]["cache"] == "auto" and config["teacher"]["encoder"] is None
    assert config["distill"] == {"name": [], "weights": {}, "options": {}}
    assert config["data"]["scale"] == [0.2, 1.0] and config["data"]["size"] is None
    assert config["student"]["encoder"] == {"name": "test_resnet"}


def test_defaults_are_copies_not_shared():
    first = validate({"inner": {"need": "x"}}, SMALL, "cfg")
    first["names"].append("changed")
    second = validate({"inner": {"need": "x"}}, SMALL, "cfg")
    assert second["names"] == []


def test_path_fields_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = distill(tmp_path, "student.weights=w/student.pt")
    assert config["data"]["path"] == os.path.join(str(tmp_path), "data.h5")
    assert config["student"]["weights"] == os.path.join(str(tmp_path), "w", "student.pt")
    assert config["teacher"]["weights"] is None  # a null path stays null


def test_empty_section_takes_every_default():
    config = validate({"inner": {"need": "x"}, "count": 1}, {**SMALL, "extra": {"k": Field("int", 7)}}, "cfg")
    assert config["extra"] == {"k": 7}
    assert validate({"inner": {"need": "x"}, "extra": None}, {**SMALL, "extra": {"k": Field("int", 7)}},
                    "cfg")["extra"] == {"k": 7}


@pytest.mark.parametrize("value", [0, [], "", False])
def test_falsy_non_mapping_section_is_an_error(value):
    message = config_error(validate, {"inner": value}, SMALL, "cfg.yaml")
    assert message.startswith("cfg.yaml: 'inner' must be a mapping of keys")


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL + "sede: 3\n")
    message = config_error(load_config, path, DISTILL)
    assert message.startswith(f"{path}: unknown key 'sede'")
    assert "seed" in message  # the known keys are listed


def test_unknown_nested_key_names_the_dotted_key(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL.replace("train: {epochs: 2}", "train: {epochs: 2, bacth_size: 8}"))
    message = config_error(load_config, path, DISTILL)
    assert f"{path}: unknown key 'train.bacth_size'" in message and "batch_size" in message


def test_unknown_key_in_override(tmp_path):
    message = config_error(distill, tmp_path, "optim.learning_rate=0.1")
    assert "unknown key 'optim.learning_rate'" in message and "override 'optim.learning_rate=0.1'" in message
    message = config_error(distill, tmp_path, "optimizer.lr=0.1")
    assert "unknown key 'optimizer'" in message


def test_override_into_a_leaf_is_refused(tmp_path):
    message = config_error(distill, tmp_path, "optim.lr.x=1")
    assert "'optim.lr' has no sub-keys" in message


@pytest.mark.parametrize("override, key, got", [
    ("train.epochs=two", "train.epochs", "'two' (str)"),
    ("train.epochs=true", "train.epochs", "True (bool)"),
    ("train.epochs=2.5", "train.epochs", "2.5 (float)"),
    ("optim.lr=[0.1]", "optim.lr", "[0.1] (list)"),
    ("optim.lr=true", "optim.lr", "True (bool)"),
    ("optim.lr=fast", "optim.lr", "'fast' (str)"),
    ("optim.nesterov=1", "optim.nesterov", "1 (int)"),
    ("data.scale=0.5", "data.scale", "0.5 (float)"),
    ("student.encoder=resnet18", "student.encoder", "'resnet18' (str)"),
])
def test_wrong_type_names_key_and_value(tmp_path, override, key, got):
    message = config_error(distill, tmp_path, override)
    assert f"'{key}' must be" in message and message.endswith(f"got {got}")


def test_null_for_a_non_nullable_key(tmp_path):
    message = config_error(distill, tmp_path, "optim.lr=null")
    assert "'optim.lr' must not be null; expected a number" in message
    assert distill(tmp_path, "train.clip_grad_norm=null")["train"]["clip_grad_norm"] is None


def test_list_item_of_wrong_type_is_named_by_index(tmp_path):
    message = config_error(distill, tmp_path, "data.size=[32, x]")
    assert "'data.size[1]' must be an integer" in message


def test_float_accepts_exponent_strings_and_ints(tmp_path):
    config = load_config(write(tmp_path, MINIMAL_DISTILL + "optim: {lr: 5e-4, weight_decay: 0}\n"), DISTILL)
    assert config["optim"]["lr"] == 0.0005 and isinstance(config["optim"]["lr"], float)
    assert config["optim"]["weight_decay"] == 0.0 and isinstance(config["optim"]["weight_decay"], float)
    assert distill(tmp_path, "optim.lr=1")["optim"]["lr"] == 1.0
    assert distill(tmp_path, "optim.lr=1e-2")["optim"]["lr"] == 0.01


def test_non_finite_float_is_refused(tmp_path):
    assert "'optim.lr' must be a number" in config_error(distill, tmp_path, "optim.lr=.inf")
    assert "'optim.lr' must be a number" in config_error(distill, tmp_path, "optim.lr=nan")


def test_list_str_accepts_one_name(tmp_path):
    assert distill(tmp_path, "distill.name=crd")["distill"]["name"] == ["crd"]
    assert distill(tmp_path, "distill.name=[crd, at]")["distill"]["name"] == ["crd", "at"]


def test_choices(tmp_path):
    message = config_error(distill, tmp_path, "optim.name=adam")
    assert message.endswith("'optim.name' must be one of sgd, adamw; got 'adam'")
    assert distill(tmp_path, "optim.name=adamw")["optim"]["name"] == "adamw"


def test_check_predicates(tmp_path):
    message = config_error(distill, tmp_path, "optim.lr=-0.1")
    assert message.endswith("'optim.lr' must be a positive number, got -0.1")
    message = config_error(distill, tmp_path, "optim.weight_decay=-1")
    assert "'optim.weight_decay' must be a number >= 0" in message
    message = config_error(distill, tmp_path, "data.size=[32, 0]")
    assert "'data.size' must be positive sizes, got [32, 0]" in message
    assert distill(tmp_path, "optim.momentum=0")["optim"]["momentum"] == 0.0


def test_missing_required_key(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL.replace("train: {epochs: 2}\n", ""))
    message = config_error(load_config, path, DISTILL)
    assert message == f"{path}: missing key 'train.epochs' (number of epochs)"
    message = config_error(load_config, write(tmp_path, "train: {epochs: 1}\n", "t.yaml"), TEACHER)
    assert "missing key 'data.path'" in message


def test_missing_required_key_can_come_from_an_override(tmp_path):
    path = write(tmp_path, MINIMAL_DISTILL.replace("train: {epochs: 2}\n", ""))
    assert load_config(path, DISTILL, ["train.epochs=3"])["train"]["epochs"] == 3


def test_train_teacher_schema(tmp_path):
    text = "data: {path: d.h5}\nmodel: {modality: rgb, encoder: {name: test_resnet}}\ntrain: {epochs: 1}\n"
    config = load_config(write(tmp_path, text), TEACHER, ["task.segmentation=seg13"])
    assert config["task"] == {"classes": None, "class_subset": None, "segmentation": "seg13",
                              "segmentation_weight": 1.0, "decoder_channels": 64}
    assert "teacher" not in config and "distill" not in config
    message = config_error(load_config, write(tmp_path, text), TEACHER, ["distill.name=crd"])
    assert "unknown key 'distill'" in message


# ------------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize("text, keys, value", [
    ("optim.lr=0.01", ["optim", "lr"], 0.01),
    ("distill.name=[crd, at]", ["distill", "name"], ["crd", "at"]),
    ("teacher.encoder=null", ["teacher", "encoder"], None),
    ("seed=7", ["seed"], 7),
    ("data.augment=true", ["data", "augment"], True),
    ("device=cuda:1", ["device"], "cuda:1"),
    ("a.b={x: 1}", ["a", "b"], {"x": 1}),
    ("name=", ["name"], ""),
    (" optim.lr =0.5", ["optim", "lr"], 0.5),
    ("data.path=a=b.h5", ["data", "path"], "a=b.h5"),
])
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["optim.lr", "=3", "optim..lr=1", ".lr=1", "optim.=1"])
def test_parse_override_refuses_malformed(text):
    message = config_error(parse_override, text)
    assert message == f"override '{text}' is not of the form key.sub=value"


def test_parse_override_refuses_bad_yaml():
    message = config_error(parse_override, "distill.name=[crd")
    assert message.startswith("override 'distill.name=[crd': the value is not valid YAML")


def test_overrides_inside_free_mappings(tmp_path):
    config = distill(tmp_path, "distill.name=crd", "distill.options.crd.num_negatives=64",
                     "distill.weights.crd=0.8", "student.encoder.drop_rate=0.1")
    assert config["distill"]["options"] == {"crd": {"num_negatives": 64}}
    assert config["distill"]["weights"] == {"crd": 0.8}
    assert config["student"]["encoder"] == {"name": "test_resnet", "drop_rate": 0.1}


def test_assign_creates_sections_and_replaces_values():
    data = {"count": 1}
    assign_override(data, ["inner", "opts", "deep", "x"], 5, SMALL, "cfg", "inner.opts.deep.x=5")
    assign_override(data, ["count"], 9, SMALL, "cfg", "count=9")
    assert data == {"count": 9, "inner": {"opts": {"deep": {"x": 5}}}}
    message = config_error(assign_override, data, ["inner", "nope"], 1, SMALL, "cfg", "inner.nope=1")
    assert message == ("cfg: override 'inner.nope=1': unknown key 'inner.nope'; known keys here: need, opts")


def test_override_of_a_whole_section_is_validated(tmp_path):
    assert distill(tmp_path, "optim={lr: 0.2}")["optim"]["lr"] == 0.2
    assert "'optim' must be a mapping of keys" in config_error(distill, tmp_path, "optim=0")


def test_base_instead_of_file():
    base = {"inner": {"need": "x"}}
    config = load_config(None, SMALL, ["count=4"], base=base)
    assert config["count"] == 4 and base == {"inner": {"need": "x"}}  # the base is not modified
    assert config_error(load_config, None, SMALL, ["count=x"], base=base).startswith("config: 'count'")


# ------------------------------------------------------------------------------------------ config files
def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    assert config_error(load_config, path, DISTILL) == f"{path}: no such config file"


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "train: {epochs: 2\nseed: [\n")
    message = config_error(load_config, path, DISTILL)
    assert message.startswith(f"{path}: not valid YAML (")


def test_binary_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x80garbage")
    assert config_error(load_config, path, DISTILL) == f"{path}: not a YAML text file (it is not UTF-8)"


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("3\n", "int")])
def test_non_mapping_yaml(tmp_path, text, kind):
    path = write(tmp_path, text)
    message = config_error(load_config, path, DISTILL)
    assert message == f"{path}: the config must be a mapping of keys, got {kind}"


def test_empty_file_is_missing_keys_not_a_crash(tmp_path):
    path = write(tmp_path, "")
    assert config_error(load_config, path, DISTILL).startswith(f"{path}: missing key 'data.path'")


def test_python_tags_are_refused(tmp_path):
    path = write(tmp_path, "seed: !!python/object/apply:os.getcwd []\n")
    assert config_error(load_config, path, DISTILL).startswith(f"{path}: not valid YAML")


# ------------------------------------------------------------------------------------------ differences
def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}


def test_config_differences(tmp_path):
    saved = distill(tmp_path)
    current = distill(tmp_path, "optim.lr=0.1", "train.progress=false", "device=cpu", "distill.name=crd")
    assert config_differences(saved, saved) == []
    assert config_differences(saved, current) == [
        "device: 'auto' -> 'cpu'", "distill.name: [] -> ['crd']", "optim.lr: 0.05 -> 0.1",
        "train.progress: True -> False"]
    assert config_differences(saved, current, RESUME_MAY_CHANGE) == [
        "distill.name: [] -> ['crd']", "optim.lr: 0.05 -> 0.1"]


def test_config_differences_names_absent_keys():
    assert config_differences({"a": {"b": 1}}, {"a": {"c": 2}}) == ["a.b: 1 -> (absent)", "a.c: (absent) -> 2"]
    assert config_differences({"a": None}, {}) == ["a: None -> (absent)"]
