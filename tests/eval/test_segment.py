"""Segmentation transfer in process: what each protocol trains, the scratch baseline, per-class IoU by hand."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from crossmodal.errors import ConfigError, DataError
from crossmodal.eval.checkpoints import load_encoder, method_name, recorded_seed
from crossmodal.engine.confusion import confusion_matrix, per_class_iou
from crossmodal.eval.segment import FORMAT, SegmentOptions, format_table, run_segment, segmentation_labels
from crossmodal.models import Encoder
from crossmodal.train.export import export_encoder
from crossmodal.engine import SupervisedTask

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _checkpoint_model(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def _encoder_state(model_state):
    return {key[len("encoder."):]: value for key, value in model_state.items() if key.startswith("encoder.")}


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    """A bare exported depth encoder (no model card)."""
    torch.manual_seed(3)
    encoder = Encoder("test_resnet", in_chans=1, small_input=True)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    export_encoder(encoder, path)
    return path


@pytest.fixture(scope="module")
def both(student_file, synthetic_file, tmp_path_factory):
    """Both protocols, one epoch each, from the bare file."""
    out = tmp_path_factory.mktemp("both")
    result = run_segment(SegmentOptions(str(student_file), str(synthetic_file), "seg", modality="depth", epochs=1,
                                        batch_size=8, out=str(out), json_path=str(out / "copy.json")))
    return out, result


def test_frozen_protocol_keeps_every_encoder_tensor_and_trains_the_decoder(both, student_file):
    out, _ = both
    loaded = load_encoder(student_file)
    model = _checkpoint_model(out / "frozen")
    encoder_after = _encoder_state(model)
    assert encoder_after.keys() == loaded.encoder.state_dict().keys()
    for key, value in loaded.encoder.state_dict().items():  # parameters and BatchNorm buffers alike
        assert torch.equal(encoder_after[key], value), key
    torch.manual_seed(0)  # the decoder's initialisation (seed 0), as run_segment draws it
    initial_head = SupervisedTask(copy.deepcopy(loaded.encoder), "depth", segmentation="seg",
                                  num_segmentation_classes=13).head.state_dict()
    changed = [key for key, value in initial_head.items() if not torch.equal(model[f"head.{key}"], value)]
    assert any(key.endswith("weight") for key in changed)


def test_finetune_protocol_changes_the_encoder(both, student_file):
    out, _ = both
    before = load_encoder(student_file).encoder.state_dict()
    after = _encoder_state(_checkpoint_model(out / "finetune"))
    changed = [key for key in before if not torch.equal(after[key], before[key])]
    assert any("running_mean" in key for key in changed)
    assert any(key.endswith("weight") and "bn" not in key for key in changed)


def test_result_json_and_outputs(both, student_file, synthetic_file):
    out, result = both
    saved = json.loads((out / "segment.json").read_text())
    assert saved == result == json.loads((out / "copy.json").read_text())
    assert result["format"] == FORMAT and result["method"] == "unknown" and result["random_init"] is False
    assert result["checkpoint"] == str(student_file) and result["data"] == str(synthetic_file)
    assert (result["modality"], result["labels"], result["seed"], result["epochs"]) == ("depth", "seg", 0, 1)
    assert set(result["results"]) == {"finetune", "frozen"}
    for protocol, scores in result["results"].items():
        assert all(0 <= scores[key] <= 1 for key in ("pixel_acc", "mean_class_acc", "miou"))
        ious = [iou for iou in scores["per_class_iou"].values() if iou is not None]
        assert len(scores["per_class_iou"]) == 13 and scores["miou"] == pytest.approx(sum(ious) / len(ious))
        with open(scores["preview"], "rb") as handle:
            assert handle.read(8) == PNG_SIGNATURE
        assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "curves.png", "preview.png"} <= {
            path.name for path in (out / protocol).iterdir()}


def test_random_init_is_the_same_architecture_with_other_weights(student_file, synthetic_file, tmp_path):
    loaded, scratch = load_encoder(student_file), load_encoder(student_file, random_init=True, seed=0)
    assert scratch.weights is None
    trained_state, scratch_state = loaded.encoder.state_dict(), scratch.encoder.state_dict()
    assert {k: v.shape for k, v in trained_state.items()} == {k: v.shape for k, v in scratch_state.items()}
    convolutions = [key for key, value in trained_state.items() if value.ndim == 4]
    assert convolutions and not any(torch.equal(trained_state[key], scratch_state[key]) for key in convolutions)
    result = run_segment(SegmentOptions(str(student_file), str(synthetic_file), "seg", modality="depth",
                                        protocols=("frozen",), random_init=True, epochs=1, batch_size=8,
                                        out=str(tmp_path)))
    assert result["method"] == "scratch" and result["random_init"] is True and list(result["results"]) == ["frozen"]
    encoder_after = _encoder_state(_checkpoint_model(tmp_path / "frozen"))
    assert all(torch.equal(encoder_after[key], value) for key, value in scratch_state.items())


def test_the_device_loader_trains_the_same_decoder_without_augmentation(student_file, synthetic_file, tmp_path):
    """``--loader device``: the splits held on the device; unaugmented batches are the DataLoader's, so the
    frozen protocol trains the same decoder to the same scores."""
    results = {}
    for loader in ("workers", "device"):
        results[loader] = run_segment(SegmentOptions(
            str(student_file), str(synthetic_file), "seg", modality="depth", protocols=("frozen",), epochs=1,
            batch_size=8, augment=False, loader=loader, out=str(tmp_path / loader)))["results"]["frozen"]
        saved = yaml.safe_load((tmp_path / loader / "frozen" / "config.yaml").read_text())
        assert saved["data"]["loader"] == loader
    assert results["device"]["per_class_iou"] == results["workers"]["per_class_iou"]
    heads = [_checkpoint_model(tmp_path / loader / "frozen") for loader in ("workers", "device")]
    assert all(torch.equal(heads[0][key], heads[1][key]) for key in heads[0])


def test_the_table_shows_percent_like_probe_and_report():
    """The printed table is in percent with one decimal (probe's and report's convention); the JSON keeps fractions."""
    result = {"labels": "seg", "modality": "depth", "method": "crd", "seed": 0, "epochs": 1, "test_split": "test",
              "results": {"finetune": {"pixel_acc": 0.87264, "mean_class_acc": 0.5, "miou": 1.0},
                          "frozen": {"pixel_acc": 0.0, "mean_class_acc": None, "miou": 0.04321}}}
    lines = format_table(result).splitlines()
    assert lines[1].split() == ["protocol", "pixel_acc", "mean_class_acc", "miou"]
    assert lines[2].split() == ["finetune", "87.3%", "50.0%", "100.0%"]
    assert lines[3].split() == ["frozen", "0.0%", "-", "4.3%"]


def test_a_batch_larger_than_the_split_names_the_flag_and_writes_nothing(student_file, synthetic_file, tmp_path):
    options = SegmentOptions(str(student_file), str(synthetic_file), "seg", modality="depth", epochs=1,
                             batch_size=1000, out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"^--batch-size 1000 x 1 process\(es\) exceeds the \d+ training samples"):
        run_segment(options)
    assert not (tmp_path / "out").exists()


def test_per_class_iou_by_hand():
    # 2 x 4 map, 4 classes, 255 void; class 3 is never in the ground truth but predicted once.
    target = torch.tensor([[0, 0, 1, 255],
                           [2, 2, 1, 1]])
    predicted = torch.tensor([[0, 1, 1, 3],
                              [2, 3, 1, 0]])
    confusion = confusion_matrix(predicted, target, 4, ignore_index=255)
    # class 0: tp 1, true 2, predicted 2 -> 1/3;  class 1: tp 2, true 3, predicted 3 -> 2/4
    # class 2: tp 1, true 2, predicted 1 -> 1/2;  class 3: absent from the ground truth -> None
    assert per_class_iou(confusion) == [pytest.approx(1 / 3), pytest.approx(0.5), pytest.approx(0.5), None]


def test_method_names_and_seeds():
    distill = {"verb": "distill", "distillers": {"crd": {}, "kd": {}}, "loss": {"ce": 0.5}, "config": {"seed": 7}}
    assert method_name(distill, False) == "crd+kd+ce"
    assert method_name({**distill, "loss": {"ce": 0.0}}, False) == "crd+kd"
    assert method_name({"verb": "train-teacher"}, False) == "supervised"
    assert method_name(None, False) == "unknown" and method_name(distill, True) == "scratch"
    options = SegmentOptions("ckpt", "data.h5", "seg", seed=2)
    assert recorded_seed(distill, options.random_init, options.seed) == 7
    assert recorded_seed(None, False, options.seed) == 2 and recorded_seed(distill, True, options.seed) == 2


def test_label_set_must_be_a_segmentation_set(synthetic_file):
    assert segmentation_labels(str(synthetic_file), "seg").type == "segmentation"
    with pytest.raises(ConfigError, match="'label' .* is a class label set.*segmentation label sets: seg"):
        segmentation_labels(str(synthetic_file), "label")
    with pytest.raises(DataError, match="no label set 'nope'"):
        segmentation_labels(str(synthetic_file), "nope")
