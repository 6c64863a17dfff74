"""The timm encoder: stage maps that match its spec for every channel count, small-image stems, input norm."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from crossmodal.errors import ConfigError
from crossmodal.models import Encoder, FeatureSpec, apply_small_input_stem, create_encoder


def assert_matches_spec(encoder: Encoder, x: torch.Tensor, num_classes: int) -> None:
    out = encoder(x)
    spec = encoder.spec
    assert isinstance(spec, FeatureSpec) and spec.num_stages == len(out.features)
    for feature, channels, reduction in zip(out.features, spec.channels, spec.reductions):
        assert feature.shape == (x.shape[0], channels, x.shape[2] // reduction, x.shape[3] // reduction)
    assert out.embedding.shape == (x.shape[0], spec.embed_dim)
    if num_classes:
        assert out.logits.shape == (x.shape[0], num_classes) and spec.num_classes == num_classes
    else:
        assert out.logits is None and spec.num_classes == 0


@pytest.mark.parametrize("small_input", [False, True])
@pytest.mark.parametrize("in_chans", [1, 2, 3, 4])
def test_every_channel_count_gives_the_spec_shapes(in_chans, small_input):
    encoder = Encoder("test_resnet", in_chans=in_chans, num_classes=3 if in_chans % 2 else 0,
                      small_input=small_input)
    assert_matches_spec(encoder, torch.randn(2, in_chans, 32, 32), 3 if in_chans % 2 else 0)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_small_input_keeps_a_4x4_last_map_on_32px(name):
    small = Encoder(name, in_chans=1, small_input=True)
    plain = Encoder(name, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    assert small(x).features[-1].shape[-2:] == (4, 4) and small.spec.reductions[-1] == 8
    assert plain(x).features[-1].shape[-2:] == (1, 1) and plain.spec.reductions == (2, 4, 8, 16, 32)
    assert small.spec.channels == plain.spec.channels == (64, 64, 128, 256, 512)
    assert isinstance(small.model.maxpool, nn.Identity)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_other_families_follow_their_spec(name):
    for small_input in (False, True):
        encoder = Encoder(name, in_chans=2, num_classes=4, small_input=small_input)
        assert_matches_spec(encoder, torch.randn(2, 2, 32, 32), 4)
    assert encoder.spec.reductions[-1] < Encoder(name, in_chans=2).spec.reductions[-1]


def test_small_input_keeps_parameter_shapes_and_batchnorm_statistics():
    encoder = Encoder("test_resnet", in_chans=1, small_input=True)
    plain = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=0)
    assert {k: v.shape for k, v in encoder.model.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()}
    # measuring the reductions ran a forward, in eval mode: no statistics moved, train mode restored
    assert encoder.training and encoder.model.training
    for name, buffer in encoder.model.named_buffers():
        expected = plain.get_buffer(name)
        assert torch.equal(buffer, expected), name
    plain.load_state_dict(encoder.model.state_dict())
    apply_small_input_stem(plain)
    encoder.eval(), plain.eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(encoder(x).embedding, plain.forward_head(plain.forward_features(x), pre_logits=True))


def test_input_norm_is_applied_before_the_backbone():
    mean, std = [0.5, -1.0], [2.0, 0.25]
    normed = Encoder("test_resnet", in_chans=2, input_norm=(mean, std)).eval()
    plain = Encoder("test_resnet", in_chans=2).eval()
    plain.load_state_dict(normed.state_dict())
    x = torch.randn(2, 2, 32, 32)
    expected = plain((x - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(1, 2, 1, 1))
    # powers of two: every way of writing (x - mean) / std rounds alike, so the network sees the same input bits
    assert torch.equal(normed(x).embedding, expected.embedding)
    assert normed.input_norm == ((0.5, -1.0), (2.0, 0.25))
    assert set(normed.state_dict()) == set(plain.state_dict())  # buffers not saved: the config records them


def test_config_rebuilds_the_same_encoder():
    encoder = Encoder("test_resnet", in_chans=2, num_classes=5, small_input=True, input_norm=([0, 0], [1, 2]),
                      drop_rate=0.1)
    again = create_encoder(encoder.config)
    assert again.spec == encoder.spec and again.input_norm == encoder.input_norm and again.config == encoder.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in encoder.state_dict().items()}


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="no_such_net", in_chans=3), "unknown timm model 'no_such_net'"),
    (dict(name="test_resnet", in_chans=3, pretrained=True), "pretrained=True"),
    (dict(name="test_resnet", in_chans=0), "in_chans"),
    (dict(name="test_resnet", in_chans=3, num_classes=-1), "num_classes"),
    (dict(name="test_resnet", in_chans=2, input_norm=([0.5], [1.0])), "input_norm needs 2"),
    (dict(name="test_resnet", in_chans=1, input_norm=([0.5], [0.0])), "positive"),
    (dict(name="test_vit", in_chans=3, small_input=True), "patch-embedding"),
    (dict(name="test_resnet", in_chans=3, not_an_option=1), "test_resnet"),
])
def test_bad_options_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        Encoder(**kwargs)
    assert "\n" not in str(info.value)


def test_missing_name_in_config():
    with pytest.raises(ConfigError, match="lacks in_chans"):
        create_encoder({"name": "test_resnet"})


def test_a_model_without_a_findable_stem_is_refused():
    model = timm.create_model("test_resnet", pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "first_conv": None}
    with pytest.raises(ConfigError, match="first_conv"):
        apply_small_input_stem(model)
    model.pretrained_cfg = {**model.pretrained_cfg, "first_conv": "layer1"}
    with pytest.raises(ConfigError, match="not a Conv2d"):
        apply_small_input_stem(model)


def test_a_model_without_forward_intermediates_is_refused(monkeypatch):
    class Plain(nn.Module):
        feature_info: list = []

    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: Plain())
    with pytest.raises(ConfigError, match="forward_intermediates"):
        Encoder("test_resnet", in_chans=3)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_logits_are_the_classifier_on_the_embedding_and_equal_forward_head_in_eval(name):
    torch.manual_seed(0)
    encoder = Encoder(name, in_chans=3, num_classes=4, drop_rate=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    out = encoder(x)
    final = encoder.model.forward_intermediates(x, intermediates_only=False)[0]
    torch.testing.assert_close(out.logits, encoder.model.forward_head(final), rtol=0, atol=0)
    torch.testing.assert_close(out.logits, encoder.model(x), rtol=0, atol=0)
    assert encoder._classifier_is_head is True and encoder.model.training is False


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_embedding_and_logits_share_one_dropout_mask_in_training(name):
    torch.manual_seed(0)
    encoder = Encoder(name, in_chans=3, num_classes=4, drop_rate=0.5).train()
    out = encoder(torch.randn(4, 3, 32, 32))
    assert (out.embedding == 0).any()  # dropout is active
    torch.testing.assert_close(out.logits, encoder.model.get_classifier()(out.embedding), rtol=0, atol=0)
    assert all(module.training for module in encoder.modules())  # the first-batch check restored train mode


def test_a_head_the_classifier_does_not_reproduce_falls_back_to_forward_head():
    # dla's classifier is a 1x1 conv on the unflattened pooled map; the flattened embedding does not fit it
    encoder = Encoder("dla46_c", in_chans=3, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    out = encoder(x)
    assert encoder._classifier_is_head is False
    assert torch.equal(out.logits, encoder.model(x))  # forward_head itself: the same bits
    # a head that adds a term after the classifier (as volo's auxiliary head does) is detected too
    patched = Encoder("test_resnet", in_chans=3, num_classes=4).eval()
    forward_head = patched.model.forward_head
    patched.model.forward_head = lambda x, pre_logits=False: forward_head(x, pre_logits) + (0 if pre_logits else 1)
    out = patched(x)
    assert patched._classifier_is_head is False
    assert torch.equal(out.logits, patched.model.get_classifier()(out.embedding) + 1)
