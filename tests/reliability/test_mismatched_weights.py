"""A weight file loaded as another encoder than it is (issue 16, item 7): refused in one line, never adapted
silently. Evaluation loads (probe, segment) take a run's weights as they are; training may initialise from
weights of another channel count only when ``SECTION.adapt_input`` asks for it, and then says so on stderr."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, cli, error_line
from crossmodal.models import Encoder
from crossmodal.train.export import export_encoder

NAME = "test_resnet"
SMOKE_TEACHER = ROOT / "experiments" / "configs" / "smoke_teacher.yaml"
SMOKE_DISTILL = ROOT / "experiments" / "configs" / "smoke_distill.yaml"


def depth_run(folder: Path, **encoder) -> Path:
    """A finished-looking depth distill run: a 1-channel student and its model card."""
    run = folder / "run"
    run.mkdir()
    student = Encoder(NAME, in_chans=1, **encoder)
    export_encoder(student, run / "student.safetensors", "depth")
    card = {"format": "crossmodal-model-card/1", "verb": "distill", "weights": "student.safetensors",
            "modality": "depth", "encoder": student.config, "distillers": {"crd": {}}, "config": {"seed": 0}}
    (run / "model_card.json").write_text(json.dumps(card))
    return run


@pytest.fixture
def rgb_file(tmp_path) -> Path:
    """A 3-channel encoder exported by crossmodal (its metadata says rgb)."""
    path = tmp_path / "rgb.safetensors"
    export_encoder(Encoder(NAME, in_chans=3), path, "rgb")
    return path


def problem(result) -> str:
    """The one error line of a failed command, without its ``crossmodal VERB: error:`` prefix; exit status 2."""
    assert result.returncode == 2, result.stderr
    return error_line(result).split("error: ", 1)[1]


def evaluate(verb: str, run: Path, data: Path, tmp_path: Path):
    if verb == "probe":
        return cli("probe", "--checkpoint", run, "--data", data, "--json", tmp_path / "p.json")
    return cli("segment", "--checkpoint", run, "--data", data, "--labels", "seg", "--epochs", "1",
               "--out", tmp_path / "seg")


@pytest.mark.parametrize("verb", ["probe", "segment"])
def test_a_run_whose_weights_are_an_rgb_network_is_refused(verb, rgb_file, synthetic_file, tmp_path):
    run = depth_run(tmp_path)
    (run / "student.safetensors").write_bytes(rgb_file.read_bytes())  # the reported fault
    result = evaluate(verb, run, synthetic_file, tmp_path)
    assert problem(result) == (f"{run}/student.safetensors: its encoder has 3 input channels (rgb), the "
                                  f"run's model card says 1 input channel (depth)")
    assert "adapted" not in result.stderr


def test_a_plain_state_dict_of_another_channel_count_is_refused(rgb_file, synthetic_file, tmp_path):
    """Without crossmodal metadata the tensors tell: still no adaptation."""
    run = depth_run(tmp_path)
    save_file(Encoder(NAME, in_chans=3).model.state_dict(), str(run / "student.safetensors"))
    result = evaluate("probe", run, synthetic_file, tmp_path)
    assert problem(result) == (f"{run}/student.safetensors: its encoder has 3 input channels, the run's "
                                  f"model card says 1 (depth)")


def test_a_mismatch_no_tensor_shows_is_refused(synthetic_file, tmp_path):
    """small_input changes no parameter shape: only the recorded config shows the file is another encoder."""
    run = depth_run(tmp_path)
    export_encoder(Encoder(NAME, in_chans=1, small_input=True), run / "student.safetensors", "depth")
    result = evaluate("segment", run, synthetic_file, tmp_path)
    assert problem(result) == (f"{run}/student.safetensors: its encoder has small_input true, the run's "
                                  f"model card says small_input false")


def test_an_exported_file_with_doctored_metadata_is_refused(synthetic_file, tmp_path):
    path = tmp_path / "student.safetensors"
    rgb = Encoder(NAME, in_chans=3)
    save_file(rgb.model.state_dict(), str(path), metadata={"encoder": json.dumps({**rgb.config, "in_chans": 1})})
    result = cli("probe", "--checkpoint", path, "--data", synthetic_file, "--modality", "depth")
    assert problem(result) == f"{path}: its encoder has 3 input channels, its metadata says 1"


def teacher_args(data: Path, out: Path, *overrides: str) -> list:
    return ["train-teacher", SMOKE_TEACHER, "--out", out, f"data.path={data}", "model.modality=depth",
            "train.epochs=1", "train.batch_size=16", "train.progress=false", "data.eval_split=null",
            "data.augment=false", *overrides]


def test_initialising_from_other_channels_needs_the_opt_in(rgb_file, synthetic_file, tmp_path):
    result = cli(*teacher_args(synthetic_file, tmp_path / "t", f"model.weights={rgb_file}"))
    assert problem(result) == (f"{rgb_file}: model.weights has 3 input channels (rgb), model.modality "
                                  f"depth has 1; set model.adapt_input=true to initialise from it with its first "
                                  f"convolution (conv1.0.weight) adapted")


def test_the_opt_in_adapts_and_says_so(rgb_file, synthetic_file, tmp_path):
    run = tmp_path / "t"
    result = cli(*teacher_args(synthetic_file, run, f"model.weights={rgb_file}", "model.adapt_input=true"))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "adapted" in line]
    assert said == [f"model.adapt_input: {rgb_file}: adapted conv1.0.weight from 3 to 1 input channels"]
    card = json.loads((run / "model_card.json").read_text())
    assert card["config"]["model"]["adapt_input"] is True and card["encoder"]["in_chans"] == 1


def test_distill_student_init_needs_the_opt_in(rgb_file, synthetic_file, tmp_path):
    result = cli("distill", SMOKE_DISTILL, "--out", tmp_path / "d", f"data.path={synthetic_file}",
                 "train.epochs=1", "train.progress=false", f"student.weights={rgb_file}")
    assert "student.adapt_input=true" in problem(result)


def test_a_teacher_run_whose_weights_disagree_with_its_card_is_refused(synthetic_file, tmp_path):
    teacher = depth_run(tmp_path)  # its card says depth, 1 channel
    export_encoder(Encoder(NAME, in_chans=3), teacher / "student.safetensors", "rgb")
    result = cli("distill", SMOKE_DISTILL, "--out", tmp_path / "d", f"data.path={synthetic_file}",
                 "train.epochs=1", "train.progress=false", f"teacher.weights={teacher}", "teacher.modality=depth",
                 "student.modality=rgb")
    assert problem(result) == (f"{teacher}/student.safetensors: its encoder has 3 input channels (rgb), "
                                  f"the run's model card says 1 input channel (depth)")


def test_student_weights_take_a_run_folder_as_teacher_weights_do(synthetic_file, tmp_path):
    """Before (issue 27): `student.weights=RUN` said "no such weights file" where `teacher.weights=RUN` worked."""
    from safetensors.torch import load_file

    source = depth_run(tmp_path, small_input=True)
    out = tmp_path / "d"
    result = cli("distill", SMOKE_DISTILL, "--out", out, f"data.path={synthetic_file}", "train.epochs=1",
                 "train.progress=false", f"student.weights={source}", "optim.lr=1e-12", "optim.weight_decay=0")
    assert result.returncode == 0, result.stderr
    before, after = load_file(source / "student.safetensors"), load_file(out / "student.safetensors")
    assert torch.allclose(before["conv1.0.weight"], after["conv1.0.weight"], atol=1e-9)  # from the run's student
    assert not torch.allclose(before["conv1.0.weight"], Encoder(NAME, in_chans=1, small_input=True).model
                              .state_dict()["conv1.0.weight"], atol=1e-3)  # which no fresh start gives


def test_a_folder_that_is_no_finished_run_is_named_with_its_setting(synthetic_file, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = cli("distill", SMOKE_DISTILL, "--out", tmp_path / "d", f"data.path={synthetic_file}",
                 "train.epochs=1", "train.progress=false", f"student.weights={folder}")
    assert problem(result) == f"{folder}: student.weights is a folder but not a finished run folder (no readable " \
                              f"model_card.json)"


def test_a_model_card_with_a_syntax_error_is_named_as_such(synthetic_file, tmp_path):
    """Before (issue 27): "not a finished run folder (no readable model_card.json)", for a run that finished."""
    run = depth_run(tmp_path)
    card = run / "model_card.json"
    text = json.dumps(json.loads(card.read_text()), indent=2)
    card.write_text(text.replace('"verb": "distill",', '"verb": "distill"'))  # a comma lost by a hand edit
    expected = f"{card}: not valid JSON (line 4 column 3: Expecting ',' delimiter)"
    assert problem(cli("probe", "--checkpoint", run, "--data", synthetic_file, "--json", tmp_path / "p.json")) \
        == expected
    assert problem(cli("distill", SMOKE_DISTILL, "--out", tmp_path / "d", f"data.path={synthetic_file}",
                       "train.progress=false", f"student.weights={run}")) == expected


def test_a_teacher_run_folder_whose_card_is_not_json_names_the_card(synthetic_file, tmp_path):
    run = depth_run(tmp_path)
    card = run / "model_card.json"
    card.write_text(card.read_text()[:40])
    line = problem(cli("distill", SMOKE_DISTILL, "--out", tmp_path / "d", f"data.path={synthetic_file}",
                       f"teacher.weights={run}", "teacher.modality=depth", "student.modality=rgb"))
    assert line.startswith(f"{card}: not valid JSON (line 1 column ")
