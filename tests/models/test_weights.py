"""Weight files: safe reading, timm-compatible adaptation of the stem and head, strict errors that name keys."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import adapt_input_conv

from crossmodal.errors import DataError
from crossmodal.models import Encoder, apply_small_input_stem, load_weights, read_state_dict

NAME, CLASSES = "test_resnet", 7


@pytest.fixture(scope="module")
def source():
    """A trained-looking 3-channel, 7-class test_resnet (non-zero BN statistics) and its weight files."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, num_classes=CLASSES)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    safetensors, pth = folder / "rgb.safetensors", folder / "rgb.pth"
    save_file(source, str(safetensors))
    # a training-script container with a DDP prefix
    torch.save({"state_dict": {"module." + k: v for k, v in source.items()}, "epoch": 3}, pth)
    return {"safetensors": safetensors, "pth": pth}


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_read_state_dict_unwraps_containers(files, source, fmt):
    state = read_state_dict(files[fmt])
    assert state.keys() == source.keys()
    assert all(torch.equal(state[k], source[k]) for k in source)


@pytest.mark.parametrize("in_chans", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_first_conv_is_adapted_like_timm(files, source, in_chans, fmt):
    encoder = Encoder(NAME, in_chans=in_chans, num_classes=CLASSES, weights=files[fmt])
    state = encoder.model.state_dict()
    torch.testing.assert_close(state["conv1.0.weight"], adapt_input_conv(in_chans, source["conv1.0.weight"]),
                               rtol=0, atol=0)
    assert all(torch.equal(state[k], source[k]) for k in source if k != "conv1.0.weight")


def test_head_is_dropped_without_a_classifier_and_replaced_when_its_size_differs(files, source):
    headless = timm.create_model(NAME, pretrained=False, num_classes=0)
    notes = load_weights(headless, files["safetensors"])
    assert any("no head" in note for note in notes)
    other = timm.create_model(NAME, pretrained=False, num_classes=5)
    fresh = other.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match="fresh classifier fc"):
        load_weights(other, files["safetensors"])
    assert torch.equal(other.fc.weight, fresh)
    assert torch.equal(other.layer4[0].conv1.weight, source["layer4.0.conv1.weight"])
    assert load_weights(timm.create_model(NAME, pretrained=False, num_classes=CLASSES), files["pth"]) == []


@pytest.mark.parametrize("in_chans, num_classes", [(1, 0), (2, CLASSES), (4, 0), (3, CLASSES)])
def test_timm_loads_the_same_file_to_the_same_parameters(files, in_chans, num_classes):
    ours = Encoder(NAME, in_chans=in_chans, num_classes=num_classes, weights=files["safetensors"]).model
    theirs = timm.create_model(NAME, pretrained=True, in_chans=in_chans, num_classes=num_classes,
                               pretrained_cfg_overlay=dict(file=str(files["safetensors"]), num_classes=CLASSES))
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_small_input_student_round_trips_through_timm(tmp_path):
    student = Encoder(NAME, in_chans=1, num_classes=4, small_input=True).eval()
    path = tmp_path / "student.safetensors"
    save_file(student.model.state_dict(), str(path))
    model = timm.create_model(NAME, pretrained=True, in_chans=1, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=4, input_size=(1, 32, 32)))
    apply_small_input_stem(model).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), student(x).logits)


def test_mismatched_files_name_the_keys(files, source, tmp_path):
    with pytest.raises(DataError, match=r"does not match resnet10t: .*unexpected keys .*shape mismatch "
                                        r"conv1\.0\.weight: file \(16, 3, 3, 3\) vs model \(24, 3, 3, 3\)") as info:
        Encoder("resnet10t", in_chans=3, weights=files["safetensors"])
    assert "more)" in str(info.value) and "\n" not in str(info.value)
    extra = tmp_path / "extra.safetensors"
    save_file({**source, "extra.weight": torch.zeros(2)}, str(extra))
    with pytest.raises(DataError, match=r"unexpected keys extra\.weight$"):
        Encoder(NAME, in_chans=3, num_classes=CLASSES, weights=extra)
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in source.items() if not k.startswith("layer4.0.bn1")}, str(missing))
    with pytest.raises(DataError, match=r"missing keys layer4\.0\.bn1\.weight, layer4\.0\.bn1\.bias"):
        Encoder(NAME, in_chans=3, num_classes=CLASSES, weights=missing)


def test_unsafe_corrupt_and_missing_files_are_one_line_errors(files, tmp_path):
    pickled = tmp_path / "module.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(files["pth"].read_bytes()[:2000])
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"not a safetensors file")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"lr": 0.1}, not_tensors)
    cases = [(pickled, "refused: .*weights_only=False"), (truncated, "not a readable PyTorch weights file"),
             (bad_safetensors, "not a readable safetensors file"), (text, "not a"),
             (not_tensors, "not a state dict of tensors"), (tmp_path / "absent.pth", "no such weights file")]
    for path, message in cases:
        with pytest.raises(DataError, match=message) as info:
            read_state_dict(path)
        assert str(info.value).startswith(str(path) + ": ") and "\n" not in str(info.value)
