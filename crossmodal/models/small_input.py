"""Small-image stems: CIFAR/STL-sized inputs (32-96 px) without the ImageNet stem's 4x early downsampling.

ImageNet stems shrink the image 4x before the first stage (a stride-2 convolution, then a stride-2 max-pool), so
a 32 x 32 input leaves a 1 x 1 map after the last stage. The usual CIFAR variant makes the first convolution
stride 1 and drops the stem pool [0]. Here that is done in place on a timm model, without changing any parameter
shape, so the weights stay loadable by plain ``timm.create_model`` and by :func:`apply_small_input_stem` again.

References:
    - [0] Deep Residual Learning, He et al., 2015, https://arxiv.org/abs/1512.03385 (the CIFAR ResNets)
"""
from __future__ import annotations

from torch import nn

from crossmodal.errors import ConfigError

# Stem pools of timm families, by module path (ResNet / ResNeSt: ``maxpool``; CSPNet: ``stem.pool``; DenseNet).
STEM_POOLS = ("maxpool", "stem.pool", "stem.maxpool", "features.pool0")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.Sequential)


def first_conv_names(model: nn.Module) -> tuple[str, ...]:
    """The stem convolution(s) timm names in ``pretrained_cfg['first_conv']`` (empty when it names none)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def apply_small_input_stem(model: nn.Module) -> nn.Module:
    """Make a timm model's stem keep the resolution of small images, in place.

    The stem's first convolution (timm's ``pretrained_cfg['first_conv']``: ``conv1`` for resnet18, ``conv1.0``
    for resnet10t's deep stem, ``conv_stem`` for EfficientNets, ``stem.0`` for ConvNeXt) gets stride 1 and
    "same" padding, and a stem max-pool is replaced with ``nn.Identity``. Parameter names and shapes do not
    change: weights trained this way load into ``timm.create_model(name)``; apply this function to that model
    again to run it on small images. A patchify stem with an even kernel (ConvNeXt) then pads one side more
    than the other, and torch warns once that it copies the input to do so.

    Args:
        model: a timm model; changed in place.

    Returns:
        The same model.

    Raises:
        ConfigError: the model has no stem convolution this can find, or a patch embedding (ViT-style models:
            choose ``img_size`` / ``patch_size`` through the timm options instead).

    Examples:
        >>> model = apply_small_input_stem(timm.create_model("resnet18", pretrained=False))
        >>> model.forward_features(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 512, 4, 4])
    """
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    names = first_conv_names(model)
    if not names:
        raise ConfigError(f"small_input: timm model '{architecture}' names no first_conv; cannot find its stem")
    if any(name.startswith("patch_embed") for name in names):
        raise ConfigError(f"small_input does not apply to '{architecture}', a patch-embedding model; "
                          f"set its img_size / patch_size instead")
    for name in names:
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            conv = None
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"small_input: the stem of '{architecture}' ({name}) is not a Conv2d")
        _stride_one(conv)
    for name in STEM_POOLS:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            continue
        pool = getattr(parent, child, None)
        if isinstance(pool, _POOLS) and not any(p.numel() for p in pool.parameters()):
            setattr(parent, child, nn.Identity())
    return model


def _stride_one(conv: nn.Conv2d) -> None:
    """Stride 1, with padding that keeps the spatial size (unchanged when it already does).

    timm's ``Conv2dSame`` pads in its forward from the stride, so its padding attribute does not matter.
    """
    conv.stride = (1, 1)
    if isinstance(conv.padding, str):  # "same" already, or "valid" (then the stem shrinks slightly: harmless)
        return
    keeps_size = all(k % 2 == 1 and p == d * (k - 1) // 2
                     for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation))
    if not keeps_size:
        if conv.padding_mode != "zeros":
            raise ConfigError(f"small_input: cannot re-pad a stem conv with padding_mode '{conv.padding_mode}'")
        conv.padding = "same"  # stride 1 allows torch's own "same" padding, also for even kernels
