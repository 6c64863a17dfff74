"""Weight files: safe reading, timm-compatible adaptation of the stem and head, strict errors that name keys."""
from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from crossmodal.errors import DataError
from crossmodal.models import Encoder, InputChannelsMismatch, apply_small_input_stem, load_weights, read_state_dict

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
    encoder = Encoder(NAME, in_chans=in_chans, num_classes=CLASSES, weights=files[fmt], adapt_input=True)
    assert encoder.weight_notes == ([] if in_chans == 3 else [f"adapted conv1.0.weight from 3 to {in_chans} input "
                                                              f"channels"])
    state = encoder.model.state_dict()
    torch.testing.assert_close(state["conv1.0.weight"], adapt_input_conv(in_chans, source["conv1.0.weight"]),
                               rtol=0, atol=0)
    assert all(torch.equal(state[k], source[k]) for k in source if k != "conv1.0.weight")


def test_first_conv_is_adapted_only_when_asked(files):
    with pytest.raises(InputChannelsMismatch, match=r"rgb\.safetensors: its first convolution conv1\.0\.weight "
                                                    r"takes 3 input channels, the model 1$"):
        Encoder(NAME, in_chans=1, num_classes=CLASSES, weights=files["safetensors"])
    with pytest.raises(InputChannelsMismatch):  # exact: not even when asked
        load_weights(timm.create_model(NAME, in_chans=1, num_classes=CLASSES), files["pth"], adapt_input=True,
                     exact=True)


def test_an_exact_load_keeps_no_fresh_head(files):
    with pytest.raises(DataError, match=r"unexpected keys fc\.bias, fc\.weight$"):
        load_weights(timm.create_model(NAME, num_classes=0), files["safetensors"], exact=True)
    with pytest.raises(DataError, match=r"shape mismatch fc\.weight: file \(7, 96\) vs model \(5, 96\)"):
        load_weights(timm.create_model(NAME, num_classes=5), files["safetensors"], exact=True)
    assert load_weights(timm.create_model(NAME, num_classes=CLASSES), files["safetensors"], exact=True) == []


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
    ours = Encoder(NAME, in_chans=in_chans, num_classes=num_classes, weights=files["safetensors"],
                   adapt_input=True).model
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


@pytest.mark.parametrize("make", ["torch.save", "pickle.dump"])
def test_a_blocked_global_is_named(tmp_path, make):
    # torch words this "Trying to load unsupported GLOBAL posix.system whose module posix is blocked", not
    # "Unsupported global: GLOBAL ..." as for a class it merely does not allow.
    path = tmp_path / "system.pth"
    if make == "torch.save":
        torch.save({"x": os.system}, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(os.system, file, protocol=2)
    with pytest.raises(DataError, match=rf"refused: it holds {os.system.__module__}\.system, which only unsafe") \
            as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


def test_a_headless_backbone_file_keeps_the_models_fresh_head(source, tmp_path):
    torch.manual_seed(1)
    backbone = timm.create_model(NAME, pretrained=False, num_classes=0).state_dict()
    assert "fc.weight" not in backbone
    path = tmp_path / "backbone.safetensors"
    save_file(backbone, str(path))
    model = timm.create_model(NAME, pretrained=False, num_classes=CLASSES)
    fresh = {k: v.clone() for k, v in model.fc.state_dict().items()}
    with pytest.warns(UserWarning, match="kept a fresh classifier fc: the file has none"):
        notes = load_weights(model, path)
    assert notes == ["kept a fresh classifier fc: the file has none (a headless backbone)"]
    assert all(torch.equal(model.fc.state_dict()[k], fresh[k]) for k in fresh)
    assert all(torch.equal(model.state_dict()[k], backbone[k]) for k in backbone)
    with pytest.warns(UserWarning, match="the file has none"):
        Encoder(NAME, in_chans=1, num_classes=3, weights=path, adapt_input=True)


def test_a_file_with_half_a_classifier_is_still_an_error(source, tmp_path):
    path = tmp_path / "no_bias.safetensors"
    save_file({k: v for k, v in source.items() if k != "fc.bias"}, str(path))
    with pytest.raises(DataError, match=r"missing keys fc\.bias$"):
        Encoder(NAME, in_chans=3, num_classes=CLASSES, weights=path)


def test_missing_batchnorm_counters_are_taken_from_the_model(source, tmp_path):
    counters = [k for k in source if k.endswith(".num_batches_tracked")]
    assert counters
    path = tmp_path / "no_counters.safetensors"
    save_file({k: v for k, v in source.items() if k not in counters}, str(path))
    model = timm.create_model(NAME, pretrained=False, num_classes=CLASSES)
    before = {k: model.state_dict()[k].clone() for k in counters}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notes = load_weights(model, path)
    assert notes == [f"took {len(counters)} BatchNorm num_batches_tracked counters the file lacks from the model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in counters)
    assert all(torch.equal(state[k], source[k]) for k in source if k not in counters)
    # any other missing BatchNorm buffer is still an error
    partial = tmp_path / "no_running_mean.safetensors"
    save_file({k: v for k, v in source.items() if k not in counters and k != "bn1.running_mean"}, str(partial))
    with pytest.raises(DataError, match=r"missing keys bn1\.running_mean$"):
        load_weights(timm.create_model(NAME, pretrained=False, num_classes=CLASSES), partial)


# ------------------------------------------------------------------ damage a checksum catches (issue 27)
def zero_block(path, start, length=4096):
    data = bytearray(path.read_bytes())
    data[start:start + length] = bytes(length)
    path.write_bytes(data)


def tensor_ranges(path):
    """{tensor: (first byte, end) in the file}, from the safetensors header."""
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    return {key: (8 + header_length + entry["data_offsets"][0], 8 + header_length + entry["data_offsets"][1])
            for key, entry in header.items() if key != "__metadata__"}


def test_a_zeroed_block_in_exported_weights_names_the_tensor(tmp_path):
    """Before: safetensors has no checksum, and a zeroed 4 KiB block of student.safetensors loaded silently."""
    from crossmodal.train.export import export_encoder

    path = tmp_path / "student.safetensors"
    export_encoder(Encoder(NAME, in_chans=1, num_classes=4), path, "depth")
    assert read_state_dict(path)  # intact: the recorded CRC-32s match
    ranges = tensor_ranges(path)
    key, (start, end) = max(ranges.items(), key=lambda item: item[1][1] - item[1][0])  # the largest tensor
    zero_block(path, start + (end - start) // 2 - 2048)
    with pytest.raises(DataError) as info:
        Encoder(NAME, in_chans=1, num_classes=4, weights=path)
    assert str(info.value) == f"{path}: damaged: tensor {key} fails its CRC-32 check; restore an intact copy"


def test_files_without_recorded_crcs_still_load(files, source):
    """Files exported before the CRC-32s were recorded, and other programs' files, load as they did."""
    from safetensors import safe_open

    with safe_open(str(files["safetensors"]), "pt") as handle:
        assert "crc32" not in (handle.metadata() or {})
    assert read_state_dict(files["safetensors"]).keys() == source.keys()


def test_a_flipped_byte_in_a_torch_file_is_named(files, tmp_path):
    """A torch.save-d weight file: its zip's CRC-32s, which torch.load does not check, are."""
    import zipfile

    path = tmp_path / "rgb.pth"
    path.write_bytes(files["pth"].read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda member: member.file_size)  # a large tensor
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
         + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little") + 7] ^= 0x04
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"^{path}: damaged: member {info.filename.split('/', 1)[1]} \(tensor state_dict\.module\.\S+\) "
                                        rf"fails its CRC-32 check; restore an intact copy$"):
        read_state_dict(path)
