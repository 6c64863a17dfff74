"""A frozen teacher's classifier replaced by a linear head over the data's classes (the supervised-student
protocol's teacher): the fitted classifier is the linear probe's, folded onto the raw features, and the written
teacher folder's logits are that classifier applied to its embedding."""
from __future__ import annotations

import json

import pytest
import torch

from crossmodal.errors import DataError
from crossmodal.eval.checkpoints import load_encoder
from crossmodal.eval.probe import fit_classifier, linear_probe
from crossmodal.eval.teacher_head import fit_head
from crossmodal.models import Encoder
from crossmodal.pipeline import head_or_reuse
from crossmodal.train.export import export_encoder


def blobs(n: int, dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, dim, generator=torch.Generator().manual_seed(99)) * 0.6
    labels = torch.arange(n) % 4
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=generator) + 3.0, labels


@pytest.mark.parametrize("n, dim", [(300, 20), (60, 200)])  # principal axes, and the row space (N < D)
def test_the_classifier_is_the_probes_on_raw_features(n, dim):
    """Same holdout, same C, same predictions: the linear probe's test accuracy, reproduced by an affine map of
    the raw features (standardising and decorrelation folded in)."""
    train_x, train_y = blobs(n, dim, 0)
    test_x, test_y = blobs(200, dim, 1)
    probe = linear_probe(train_x, train_y, test_x, test_y, seed=0)
    fitted = fit_classifier(train_x, train_y, 4, seed=0)
    assert fitted.c == probe.chosen["C"] and fitted.holdout_top1 == probe.holdout_top1
    assert float((fitted.predict(test_x) == test_y).double().mean()) == probe.top1


def test_log_likelihood_keeps_the_logits_at_a_calibrated_scale():
    """Well-separated classes: every C scores 100% on the holdout, so the accuracy's choice ties down to the
    strongest regularisation, whose logits are nearly equal (a teacher whose softened outputs are uniform); the
    log-likelihood's choice keeps them apart."""
    train_x, train_y = blobs(300, 20, 0)
    train_x = train_x + 20 * torch.nn.functional.one_hot(train_y, 20).float()
    by_accuracy = fit_classifier(train_x, train_y, 4, seed=0)
    by_likelihood = fit_classifier(train_x, train_y, 4, seed=0, by="log_likelihood")
    assert by_accuracy.c == 1e-6 and by_accuracy.holdout_top1 == by_likelihood.holdout_top1 == 1.0
    spread = [float((train_x @ fit.weight.T + fit.bias).std()) for fit in (by_accuracy, by_likelihood)]
    assert spread[0] < 0.01 < 1 < spread[1]
    with pytest.raises(Exception, match="'by' must be"):
        fit_classifier(train_x, train_y, 4, by="loss")


@pytest.fixture
def teacher_run(tmp_path):
    """A finished-looking rgb teacher folder with an ImageNet-sized classifier of 7 classes."""
    run = tmp_path / "teacher"
    run.mkdir()
    encoder = Encoder("test_resnet", in_chans=3, num_classes=7)
    export_encoder(encoder, run / "teacher.safetensors", "rgb")
    card = {"format": "crossmodal-model-card/1", "verb": "import-teacher", "weights": "teacher.safetensors",
            "modality": "rgb", "encoder": encoder.config, "logit_check": {"line": "old"}, "adapted": []}
    (run / "model_card.json").write_text(json.dumps(card))
    return run


def test_the_headed_folder_predicts_with_the_fitted_head(teacher_run, synthetic_file, tmp_path):
    said = []
    out = head_or_reuse(str(tmp_path / "headed"), str(teacher_run), str(synthetic_file), "label", said.append)
    card = json.loads((tmp_path / "headed" / "model_card.json").read_text())
    assert card["encoder"]["num_classes"] == 10 and len(card["head"]["classes"]) == 10
    assert "logit_check" not in card and card["head"]["fitted_on"]["modality"] == "rgb"
    assert said[-1].startswith("      head over 10 classes of 'label' on rgb: C ")
    head = fit_head(str(teacher_run), str(synthetic_file), "label")
    loaded = load_encoder(out)
    original = load_encoder(str(teacher_run))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        headed, source = loaded.encoder(images), original.encoder(images)
    torch.testing.assert_close(headed.embedding, source.embedding)  # the backbone is unchanged
    torch.testing.assert_close(headed.logits, source.embedding @ head.weight.T + head.bias)
    assert head_or_reuse(out, str(teacher_run), str(synthetic_file), "label", said.append) == out
    assert said[-1] == f"      reusing the teacher with its head {out}"


def test_a_label_set_that_is_not_a_class_set_is_one_line(teacher_run, synthetic_file):
    with pytest.raises(DataError, match="no class label set 'seg' for the teacher's head; it has"):
        fit_head(str(teacher_run), str(synthetic_file), "seg")
