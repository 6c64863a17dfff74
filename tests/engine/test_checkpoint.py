"""Checkpoints: exact round trip under weights_only loading, refusal of foreign ones, atomic writes."""
import os
import random
import re
import struct
import zipfile

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from crossmodal.errors import ConfigError, DataError
from crossmodal.engine.checkpoint import (FORMAT, config_differences, data_file_identity, load_checkpoint,
                                          load_module_state, rng_state, save_checkpoint, set_rng_state)

CONFIG = {"seed": 0, "device": "cpu", "optim": {"lr": 0.1, "betas": [0.9, 0.999]}, "data": {"path": "/d.h5",
          "num_workers": 0, "size": None}, "distill": {"name": ["crd"], "options": {"crd": {"nce_k": 16}}}}


class WithBuffer(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.linear = nn.Linear(width, 2)
        self.norm = nn.BatchNorm1d(2)
        self.register_buffer("bank", torch.zeros(4, 2))


def trained(seed=0, optimizer_name="sgd"):
    """A module and optimizer with non-trivial state: momentum buffers, running statistics, a filled bank."""
    torch.manual_seed(seed)
    module = WithBuffer()
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(module.parameters(), lr=0.01, betas=(0.8, 0.99))
    for _ in range(2):
        loss = module.norm(module.linear(torch.randn(5, 3))).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.bank += torch.arange(8.0).reshape(4, 2)
    return module, optimizer


def save(path, module, optimizer, verb="distill", config=CONFIG, extra_bank=None, **position):
    position = {"epoch": 2, "batch_in_epoch": 3, "step": 11, **position}
    extra = {"epoch_sums": {"loss": torch.tensor(1.5, dtype=torch.float64)}, "epoch_batches": 3}
    if extra_bank is not None:
        extra["bank"] = extra_bank
    save_checkpoint(path, verb=verb, config=config, module=module, optimizer=optimizer, extra=extra, **position)


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_round_trip_repeats_every_generator():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gauss value in Python's state
    state = rng_state()
    first = draws()
    draws()
    set_rng_state(state)
    assert draws() == first


def test_rng_state_survives_a_weights_only_file(tmp_path):
    np.random.seed(5)
    random.seed(6)
    np.random.randn()  # a cached Gaussian in numpy's state too
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == first


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_round_trip_restores_module_optimizer_and_position(tmp_path, optimizer_name):
    path = tmp_path / "checkpoint.pt"
    module, optimizer = trained(0, optimizer_name)
    save(path, module, optimizer)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # loadable without unpickling code
    assert raw["format"] == FORMAT and raw["verb"] == "distill"

    payload = load_checkpoint(path, verb="distill", config=CONFIG)
    assert (payload["epoch"], payload["batch_in_epoch"], payload["step"]) == (2, 3, 11)
    assert payload["config"] == CONFIG
    assert payload["extra"]["epoch_batches"] == 3 and payload["extra"]["epoch_sums"]["loss"].item() == 1.5

    fresh, fresh_optimizer = trained(1, optimizer_name)
    load_module_state(fresh, payload["model"], str(path))
    fresh_optimizer.load_state_dict(payload["optimizer"])
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert torch.equal(fresh.bank, torch.arange(8.0).reshape(4, 2))
    assert fresh.norm.num_batches_tracked.item() == 2
    state_key = "momentum_buffer" if optimizer_name == "sgd" else "exp_avg"
    for saved, loaded in zip(optimizer.state_dict()["state"].values(), fresh_optimizer.state_dict()["state"].values()):
        assert torch.equal(saved[state_key], loaded[state_key])

    # The same next step from the original and from the restored copy.
    batch = torch.randn(5, 3)
    for net, opt in ((module, optimizer), (fresh, fresh_optimizer)):
        loss = net.norm(net.linear(batch)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(module.linear.weight, fresh.linear.weight)


def test_checkpoint_restores_the_random_state(tmp_path):
    module, optimizer = trained()
    torch.manual_seed(42)
    save(tmp_path / "c.pt", module, optimizer)
    expected = torch.rand(4)
    torch.manual_seed(0)
    set_rng_state(load_checkpoint(tmp_path / "c.pt", verb="distill", config=CONFIG)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_another_verb_is_a_data_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained(), verb="train-teacher")
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error) == f"{path}: written by 'crossmodal train-teacher', not 'crossmodal distill'"


def test_another_config_names_the_differing_key(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    other = {**CONFIG, "optim": {"lr": 0.2, "betas": [0.9, 0.999]}}
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, verb="distill", config=other)
    assert one_line(error) == f"{path}: written for another config: optim.lr: 0.1 -> 0.2"


def test_many_differences_are_summarised(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    other = {**CONFIG, "seed": 1, "device": "cuda", "optim": {"lr": 0.2, "betas": [0.5, 0.5]}}
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, verb="distill", config=other)
    message = one_line(error)
    assert "device: 'cpu' -> 'cuda'" in message and message.endswith("(and 1 more)")


def test_keys_that_may_change_are_ignored(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    other = {**CONFIG, "device": "cuda:1", "data": {**CONFIG["data"], "num_workers": 4}}
    payload = load_checkpoint(path, verb="distill", config=other, may_change=("device", "data.num_workers"))
    assert payload["step"] == 11
    with pytest.raises(ConfigError, match="data.num_workers: 0 -> 4"):
        load_checkpoint(path, verb="distill", config=other, may_change=("device",))


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint\n" * 3, b"PK\x03\x04" + bytes(range(256))])
def test_garbage_file_is_one_line_data_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error).startswith(f"{path}: not a readable checkpoint: ")


def test_truncated_checkpoint_is_a_data_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error) == (f"{path}: not a readable checkpoint: truncated or damaged (it is not a complete "
                               f"archive); an interrupted copy or a full disk?")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DataError) as error:
        load_checkpoint(tmp_path / "absent.pt", verb="distill", config=CONFIG)
    assert one_line(error) == f"{tmp_path / 'absent.pt'}: no such checkpoint"


@pytest.mark.parametrize("payload", [{"weights": torch.zeros(2)}, [1, 2], {"format": FORMAT, "verb": "distill"}])
def test_other_torch_files_are_not_checkpoints(tmp_path, payload):
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error).startswith(f"{path}: ")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": FORMAT, "verb": "distill", "config": CONFIG, "hook": WithBuffer()}, path)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error).startswith(f"{path}: not a readable checkpoint")


def test_load_module_state_names_missing_unexpected_and_misshaped_keys():
    state = WithBuffer(width=3).state_dict()
    del state["bank"]
    state["extra.weight"] = torch.zeros(1)
    target = WithBuffer(width=4)  # linear.weight is 2 x 4 here, 2 x 3 in the state
    with pytest.raises(DataError) as error:
        load_module_state(target, state, "ckpt.pt")
    assert one_line(error) == ("ckpt.pt: the checkpoint's model state does not fit this architecture: "
                               "missing bank; unexpected extra.weight; mis-shaped linear.weight")
    assert torch.equal(target.bank, torch.zeros(4, 2))  # nothing was loaded


def test_load_module_state_lists_at_most_three_keys():
    with pytest.raises(DataError) as error:
        load_module_state(WithBuffer(), {}, "ckpt.pt")
    assert one_line(error).endswith("missing bank, linear.bias, linear.weight ...")


def test_atomic_save_leaves_no_temporary_file(tmp_path):
    save(tmp_path / "checkpoint.pt", *trained())
    save(tmp_path / "checkpoint.pt", *trained(), step=12)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert load_checkpoint(tmp_path / "checkpoint.pt", verb="distill", config=CONFIG)["step"] == 12


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    module, optimizer = trained()
    save(path, module, optimizer, step=11)
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as handle:  # half written, then killed
            handle.truncate(os.path.getsize(target) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save(path, module, optimizer, step=99)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert path.read_bytes() == before
    assert load_checkpoint(path, verb="distill", config=CONFIG)["step"] == 11


def test_a_key_added_by_a_later_version_counts_as_unchanged_at_its_default():
    """A checkpoint written before ``data.loader`` existed resumes while the key keeps its default."""
    saved = {"seed": 0, "data": {"path": "x.h5"}}
    defaults = {"data": {"loader": "workers"}}
    assert config_differences(saved, {"seed": 0, "data": {"path": "x.h5", "loader": "workers"}},
                              defaults=defaults) == []
    assert config_differences(saved, {"seed": 0, "data": {"path": "x.h5", "loader": "device"}},
                              defaults=defaults) == ["data.loader: (absent) -> 'device'"]
    assert config_differences(saved, {"seed": 0, "data": {"path": "x.h5", "loader": "workers"}}) == [
        "data.loader: (absent) -> 'workers'"]


# ------------------------------------------------------------------ damage the zip's CRC-32s catch (issue 27)
def member_data_offset(path, suffix):
    """(member name, file offset of its first data byte) of the archive member whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    return info.filename.split("/", 1)[-1], info.header_offset + 30 + name_length + extra_length  # as named


def storage_of(path, key):
    """The storage number of the model tensor ``key`` (torch.save numbers storages in the order it meets them)."""
    payload = torch.load(path, weights_only=True)
    return list(payload["model"]).index(key)  # the model's state comes first, one storage per tensor


def test_a_flipped_byte_in_a_tensor_is_named_and_refused(tmp_path):
    """Before: torch.load ignores the zip's CRC-32s and `--resume` went on with a changed weight."""
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    member, offset = member_data_offset(path, f"/data/{storage_of(path, 'linear.bias')}")
    data = bytearray(path.read_bytes())
    data[offset + 1] ^= 0x10
    path.write_bytes(data)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error) == (f"{path}: damaged: member {member} (tensor model.linear.bias) fails its CRC-32 "
                               f"check; resume from an intact copy, or start the run again")


def test_a_zeroed_4k_block_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained(), extra_bank=torch.randn(4096))
    data = bytearray(path.read_bytes())
    data[4096:8192] = bytes(4096)
    path.write_bytes(data)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert re.fullmatch(rf"{re.escape(str(path))}: damaged: member \S+ (\(tensor \S+\) )?(fails its CRC-32 check|"
                        rf"cannot be read \(.+\)); resume from an intact copy, or start the run again", one_line(error))


def test_a_damaged_pickle_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    member, offset = member_data_offset(path, "/data.pkl")
    data = bytearray(path.read_bytes())
    data[offset + 40] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert one_line(error).startswith(f"{path}: damaged: member {member} fails its CRC-32 check")


# ------------------------------------------------------------------ the data file a run started on (issue 27)
def data_file(path, created, num_samples=40):
    with h5py.File(path, "w") as handle:
        handle.attrs["created"] = created
        handle.attrs["num_samples"] = num_samples
    return data_file_identity(path)


def test_a_regenerated_data_file_refuses_the_resume_and_says_what_changed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    config = {**CONFIG, "data": {**CONFIG["data"], "path": str(tmp_path / "d.h5")}}
    first = data_file(tmp_path / "d.h5", "2026-12-06T00:01:02+00:00")
    save_checkpoint(path, verb="distill", config=config, module=trained()[0], optimizer=trained()[1], epoch=0,
                    batch_in_epoch=1, step=1, data_file=first)
    assert load_checkpoint(path, verb="distill", config=config, data_file=first)["data_file"] == first
    again = data_file(tmp_path / "d.h5", "2026-12-06T00:05:00+00:00", num_samples=80)
    assert again["size"] == first["size"]  # the attributes tell these two apart; the size is listed when it differs
    with pytest.raises(ConfigError) as error:
        load_checkpoint(path, verb="distill", config=config, data_file=again)
    assert one_line(error) == (
        f"{path}: written for another data file: data file {tmp_path / 'd.h5'} changed since the checkpoint "
        f"(created '2026-12-06T00:01:02+00:00' -> '2026-12-06T00:05:00+00:00', num_samples 40 -> 80); restore the "
        f"file it started on, or start a new run with --out")
    with pytest.raises(ConfigError, match=r"written for another config: data file .* changed since the "
                                          r"checkpoint \(created .*\); optim.lr: 0.1 -> 0.2; restore the file it started on, "
                                          r"or start a new run with --out$"):
        load_checkpoint(path, verb="distill", config={**config, "optim": {**CONFIG["optim"], "lr": 0.2}},
                        data_file=again)


def test_a_checkpoint_without_a_data_identity_still_resumes(tmp_path):
    """Checkpoints written before the identity was recorded, or of data that is no file, are not refused."""
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    assert load_checkpoint(path, verb="distill", config=CONFIG, data_file={"size": 3})["step"] == 11
    assert data_file_identity(tmp_path / "absent.h5") == {}
    (tmp_path / "plain.bin").write_bytes(b"12345")
    assert data_file_identity(tmp_path / "plain.bin") == {"size": 5}


def test_a_damaged_zip_directory_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save(path, *trained())
    data = bytearray(path.read_bytes())
    directory = data.rfind(b"PK\x01\x02")  # the last central directory entry's signature
    data[directory:directory + 4] = bytes(4)
    path.write_bytes(data)
    with pytest.raises(DataError) as error:
        load_checkpoint(path, verb="distill", config=CONFIG)
    assert re.fullmatch(rf"{re.escape(str(path))}: damaged: its zip directory cannot be read \(.+\); resume from "
                        rf"an intact copy, or start the run again", one_line(error))
