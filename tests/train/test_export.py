"""The exported encoders load into plain timm and compute what the trained encoders compute; the model card's
``load_with_timm`` snippet runs as written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from _run_helpers import SMOKE_DISTILL, SMOKE_TEACHER, load_checkpoint, one_thread, run_in_process

from crossmodal.data import PairedDataset
from crossmodal.models import Encoder, apply_small_input_stem, create_encoder
from crossmodal.train.export import export_encoder, load_snippet

SMALL = ["train.batch_size=8", "train.epochs=1", "train.progress=false"]


@pytest.fixture(scope="module")
def student_run(synthetic_file, tmp_path_factory):
    """(run folder, the trained task as the trainer left it) of a short smoke distillation."""
    run = tmp_path_factory.mktemp("export") / "student"
    trainers = []
    run_in_process("distill", SMOKE_DISTILL, [f"data.path={synthetic_file}", *SMALL,
                                              "distill.options.crd.num_negatives=16"], run,
                   hooks=[lambda trainer: trainers.append(trainer) if not trainers else None])
    return run, trainers[0].task


def depth_batch(path: Path) -> torch.Tensor:
    data = PairedDataset(str(path), "test", modalities=["depth"])
    return torch.stack([data[i]["depth"] for i in range(4)])


def encoder_from_checkpoint(run: Path, prefix: str) -> Encoder:
    """The encoder rebuilt from the model card's config and the checkpoint's task state (``prefix``* keys)."""
    card = json.loads((run / "model_card.json").read_text())
    encoder = create_encoder({key: value for key, value in card["encoder"].items() if value is not None})
    state = {key[len(prefix):]: value for key, value in load_checkpoint(run)["model"].items()
             if key.startswith(prefix)}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def timm_model(path: Path, in_chans: int, num_classes: int) -> torch.nn.Module:
    model = timm.create_model("test_resnet", pretrained=True, in_chans=in_chans, num_classes=num_classes,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=num_classes))
    return apply_small_input_stem(model).eval()


@torch.no_grad()
def test_exported_student_gives_the_trained_encoders_features_in_timm(student_run, synthetic_file):
    run, task = student_run
    images = depth_batch(synthetic_file)
    model = timm_model(run / "student.safetensors", in_chans=1, num_classes=0)
    encoder = encoder_from_checkpoint(run, "student.")
    with one_thread():
        expected = encoder(images)
        final, stages = model.forward_intermediates(images)
        pooled = model(images)
        trained = task.student.eval()(images)
    assert len(stages) == len(expected.features) == 5
    for got, want, live in zip(stages, expected.features, trained.features):
        assert torch.equal(got, want) and torch.equal(got, live)
    assert torch.equal(model.forward_features(images), final)
    assert torch.equal(final, expected.features[-1])
    assert pooled.shape == (4, 96) and torch.equal(pooled, expected.embedding)
    assert torch.equal(pooled, trained.embedding)
    assert pooled.std() > 0


@torch.no_grad()
def test_model_card_snippet_loads_the_student(student_run, synthetic_file, monkeypatch):
    run, _ = student_run
    snippet = json.loads((run / "model_card.json").read_text())["load_with_timm"]
    monkeypatch.chdir(run)
    namespace: dict = {}
    exec(snippet, namespace)
    model = namespace["model"].eval()
    images = depth_batch(synthetic_file)
    with one_thread():
        assert torch.equal(model(images), encoder_from_checkpoint(run, "student.")(images).embedding)


@torch.no_grad()
def test_exported_teacher_gives_the_trained_logits_in_timm(synthetic_file, tmp_path, monkeypatch):
    run = tmp_path / "teacher"  # trained under no_grad too: the trainer enables gradients itself
    run_in_process("train-teacher", SMOKE_TEACHER, [f"data.path={synthetic_file}", *SMALL,
                                                     "task.decoder_channels=8"], run)
    rgb = torch.stack([PairedDataset(str(synthetic_file), "test", modalities=["rgb"])[i]["rgb"] for i in range(4)])
    model = timm_model(run / "teacher.safetensors", in_chans=3, num_classes=10)
    encoder = encoder_from_checkpoint(run, "encoder.")
    monkeypatch.chdir(run)
    namespace: dict = {}
    exec(json.loads((run / "model_card.json").read_text())["load_with_timm"], namespace)
    with one_thread():
        logits = model(rgb)
        assert logits.shape == (4, 10) and torch.equal(logits, encoder(rgb).logits)
        assert torch.equal(namespace["model"].eval()(rgb), logits)


@torch.no_grad()
def test_snippet_carries_timm_options_and_input_normalisation(tmp_path, monkeypatch):
    """An encoder with timm options and its own input normalisation: the snippet rebuilds the same model and
    says how to normalise, so plain timm reproduces the encoder."""
    torch.manual_seed(0)
    encoder = Encoder("test_resnet", in_chans=2, num_classes=3, small_input=True, drop_rate=0.25,
                      input_norm=([0.5, -1.0], [0.25, 2.0])).eval()
    export_encoder(encoder, tmp_path / "encoder.safetensors")
    snippet = load_snippet(encoder, "encoder.safetensors")
    assert "drop_rate=0.25" in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    model, mean, std = namespace["model"].eval(), namespace["mean"], namespace["std"]
    assert model.drop_rate == 0.25
    images = torch.rand(3, 2, 16, 16)
    with one_thread():
        # powers of two: (images - mean) / std rounds as the encoder's own normalisation does, and plain timm
        # runs the same modules on the same weights: the same bits
        assert torch.equal(model((images - mean) / std), encoder(images).logits)
