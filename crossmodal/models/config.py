"""Encoder configs as users write them (a timm name and options), completed from the data and checked."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from crossmodal.errors import ConfigError


def check_input_channels(key: str, modality: str, channels: int, in_chans: int, encoder: str = "the encoder") -> None:
    """The one check that a modality fits an encoder's input: ``key`` names what chose the modality.

    Examples:
        >>> check_input_channels("--modality", "rgb", 3, 1, "the encoder of runs/student")
        Traceback (most recent call last):
        ...
        crossmodal.errors.ConfigError: --modality rgb has 3 channels, the encoder of runs/student takes 1
    """
    if channels != in_chans:
        raise ConfigError(f"{key} {modality} has {channels} channel{'' if channels == 1 else 's'}, {encoder} "
                          f"takes {in_chans}")


def encoder_config(encoder: Mapping[str, Any], modality: str, channels: int, section: str,
                   num_classes: Optional[int] = None) -> dict[str, Any]:
    """The ``SECTION.encoder`` mapping with ``in_chans`` (and ``num_classes``) filled in from the data, checked.

    Args:
        encoder: the config's encoder mapping (``name`` and timm options).
        modality: the section's modality, ``channels`` its channel count.
        section: the config section, for the messages (``model``, ``teacher``, ``student``).
        num_classes: the classifier's outputs the labels need, or None for no constraint.
    """
    config = dict(encoder)
    for key in ("weights", "adapt_input"):
        if key in config:
            raise ConfigError(f"{section}.encoder.{key}: give it as {section}.{key}")
    if "name" not in config:
        raise ConfigError(f"{section}.encoder lacks 'name' (a timm model name)")
    config.setdefault("in_chans", channels)
    check_input_channels(f"{section}.modality", modality, channels, config["in_chans"],
                         f"{section}.encoder.in_chans")
    if num_classes is not None:
        config.setdefault("num_classes", num_classes)
        if config["num_classes"] != num_classes:
            raise ConfigError(f"{section}.encoder.num_classes is {config['num_classes']} but the labels have "
                              f"{num_classes} classes")
    return config
