"""SegmentationHead: per-pixel scores at input size from the chosen encoder stages, gradients to each of them."""
import pytest
import torch

from crossmodal.errors import ConfigError
from crossmodal.models import Encoder
from crossmodal.models.segmentation import SegmentationHead


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder("test_resnet", in_chans=3, small_input=True)


# test_resnet with the small-input stem: stage 0 the stem, stages 1-4 layer1-layer4.
STAGE_MODULES = ["conv1", "layer1", "layer2", "layer3", "layer4"]


def stage_has_gradient(encoder, index):
    grads = [p.grad for p in getattr(encoder.model, STAGE_MODULES[index]).parameters()]
    return all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_spec_is_what_the_tests_assume(encoder):
    assert encoder.spec.num_stages == 5 and encoder.spec.reductions == (1, 1, 2, 4, 8)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_output_is_batch_classes_height_width(encoder, size):
    head = SegmentationHead(encoder.spec, num_classes=7, channels=16)
    assert head.stages == [2, 3, 4]  # the deepest three by default
    scores = head(encoder(torch.randn(2, 3, *size)).features, size)
    assert scores.shape == (2, 7, *size) and torch.isfinite(scores).all()


def test_output_can_be_resized(encoder):
    head = SegmentationHead(encoder.spec, num_classes=3, channels=8)
    assert head(encoder(torch.randn(1, 3, 32, 32)).features, (64, 48)).shape == (1, 3, 64, 48)


@pytest.mark.parametrize("stages, chosen", [(None, [2, 3, 4]), ([1, 4], [1, 4]), ([-1], [4]), ([0, -5], [0]),
                                            ([3, 1, -1], [1, 3, 4])])
def test_gradients_reach_every_stage_used(encoder, stages, chosen):
    head = SegmentationHead(encoder.spec, num_classes=4, channels=8, stages=stages)
    assert head.stages == chosen and len(head.lateral) == len(chosen)
    encoder.zero_grad(set_to_none=True)
    image = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(head(encoder(image).features, (32, 32)), target)
    loss.backward()
    deepest = max(chosen)
    for index in range(5):
        # every stage up to the deepest one merged is on the gradient's path; deeper ones are not
        assert stage_has_gradient(encoder, index) == (index <= deepest), index
    for lateral in head.lateral:
        assert lateral[0].weight.grad.abs().sum() > 0
    assert head.classifier.weight.grad.abs().sum() > 0


def test_lateral_widths_follow_the_spec(encoder):
    head = SegmentationHead(encoder.spec, num_classes=2, channels=8, stages=[0, 3])
    assert [lateral[0].in_channels for lateral in head.lateral] == [32, 192]
    assert head.classifier.out_channels == 2


@pytest.mark.parametrize("stages", [[5], [-6], [0, 7], []])
def test_stages_out_of_range(encoder, stages):
    with pytest.raises(ConfigError) as error:
        SegmentationHead(encoder.spec, num_classes=2, stages=stages)
    message = str(error.value)
    assert "\n" not in message and f"stages {stages}" in message and "5 stages" in message


@pytest.mark.parametrize("num_classes, channels", [(0, 8), (3, 0)])
def test_sizes_must_be_positive(encoder, num_classes, channels):
    with pytest.raises(ConfigError, match="need num_classes >= 1 and channels >= 1"):
        SegmentationHead(encoder.spec, num_classes=num_classes, channels=channels)
