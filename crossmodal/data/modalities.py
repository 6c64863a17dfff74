"""Modalities as data definitions: what is stored, what is derived at load time, how each becomes a network input.

A new modality is one :class:`Modality` passed to :func:`register_modality`; the reader, the transforms and the
converters need no new code path. Stored arrays without a definition (say a ``thermal`` camera imported with
``prepare pairs``) get a generic one: their channels as stored, normalised by the file's value range.

References:
    - [0] CMC, Tian et al., 2019, https://arxiv.org/abs/1906.05849 (the L / ab split and its ranges)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from crossmodal.data.format import Layout

Array = np.ndarray

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# CIE Lab ranges of OpenCV's float conversion over the sRGB gamut, as used by CMC to map each channel to [-1, 1].
LAB_L_RANGE = (0.0, 100.0)
LAB_A_RANGE = (-86.183, 98.233)
LAB_B_RANGE = (-107.857, 94.478)
MAX_DEPTH_M = 10.0


@dataclass(frozen=True)
class Modality:
    """How one modality is read and turned into a network input.

    Args:
        name: the key in the reader's output dict and in configs.
        channels: channels of the network input.
        source: the stored modality it is read from (itself for stored modalities).
        normalize: float32 (C, H, W) array -> the network input, same shape; may work in place (the reader
            hands it a fresh array). Channel-first, so per-channel constants broadcast over long rows.
        derive: stored (H, W, C) array -> (H, W, C) float32, for modalities computed at load time (None: stored
            as is). Channel-last, as OpenCV's colour conversions expect.
        interpolation: geometric resampling of the source, ``"linear"`` or ``"nearest"`` (depth with holes:
            averaging a hole with its neighbours invents depth).
        photometric: the photometric family applied to the source before deriving (``"color"`` for colour
            jitter, None for none). Modalities with the same source and family share one random draw, so the
            L and ab of a sample come from the same jittered picture.
        description: one line for ``inspect`` and the docs.
        elementwise: ``normalize`` maps each value on its own (per-channel constants at most), so the reader
            may run it on blocks of rows straight into a batch, fused with the dequantisation.
        pixels: for an image modality, ``(mean, std)`` per channel such that the network input is
            ``(pixel - mean) / std`` with pixels in [0, 1] (rgb: ImageNet's; lab_l: L / 100 as a grey level, 0.5
            and 0.5). A pretrained image network that expects another normalisation is fed its own from this
            (:func:`crossmodal.models.pretrained.renormalisation`). None: not an image (depth, ab).
    """

    name: str
    channels: int
    source: str
    normalize: Callable[[Array], Array]
    derive: Callable[[Array], Array] | None = None
    interpolation: str = "linear"
    photometric: str | None = None
    description: str = ""
    elementwise: bool = False
    pixels: tuple[tuple[float, ...], tuple[float, ...]] | None = None


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add (or replace) a modality definition."""
    if modality.interpolation not in ("linear", "nearest"):
        raise ValueError(f"modality '{modality.name}': interpolation must be 'linear' or 'nearest'")
    MODALITIES[modality.name] = modality
    return modality


def to_range(low: float, high: float) -> Callable[[Array], Array]:
    """Map [low, high] linearly onto [-1, 1] (values outside are not clipped)."""
    scale, shift = np.float32(2.0 / (high - low)), np.float32(2.0 * low / (high - low) + 1.0)
    return lambda array: array.astype(np.float32, copy=False) * scale - shift


_RGB_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)[:, None, None]
_RGB_SHIFT = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)[:, None, None]


def _rgb_normalize(rgb: Array) -> Array:
    """0..255 (C, H, W) -> (x / 255 - mean) / std, in place."""
    rgb *= _RGB_SCALE
    rgb -= _RGB_SHIFT
    return rgb


def _depth_normalize(depth: Array) -> Array:
    """Metres in [0, MAX_DEPTH_M] -> [-1, 1] in place; holes (0) land on -1, as do NaNs and infinities."""
    if not np.isfinite(np.add.reduce(depth, axis=None)):  # one cheap pass; most arrays are all finite
        np.nan_to_num(depth, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(depth, 0.0, MAX_DEPTH_M, out=depth)
    depth *= np.float32(2.0 / MAX_DEPTH_M)
    depth -= 1.0
    return depth


def rgb_to_lab(rgb: Array) -> Array:
    """uint8 (or 0..255 float) RGB HWC -> float32 CIE Lab HWC (L in [0, 100])."""
    return cv2.cvtColor(rgb.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)


_lab_l_to_range = to_range(*LAB_L_RANGE)
_a_to_range, _b_to_range = to_range(*LAB_A_RANGE), to_range(*LAB_B_RANGE)


def _lab_ab_normalize(ab: Array) -> Array:
    return np.stack([_a_to_range(ab[0]), _b_to_range(ab[1])])


register_modality(Modality(
    "rgb", 3, "rgb", _rgb_normalize, photometric="color", elementwise=True,
    pixels=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # IMAGENET_MEAN, IMAGENET_STD as decimals
    description="sRGB uint8, normalised with the ImageNet mean and std"))
register_modality(Modality(
    "depth", 1, "depth", _depth_normalize, elementwise=True,
    description=f"metric depth (holes filled), [0, {MAX_DEPTH_M:g}] m -> [-1, 1]"))
register_modality(Modality(
    "raw_depth", 1, "raw_depth", _depth_normalize, interpolation="nearest", elementwise=True,
    description=f"sensor depth with holes (0), nearest-neighbour resampling, [0, {MAX_DEPTH_M:g}] m -> [-1, 1]"))
register_modality(Modality(
    "lab_l", 1, "rgb", _lab_l_to_range, derive=lambda rgb: rgb_to_lab(rgb)[..., :1], photometric="color",
    pixels=((0.5,), (0.5,)), description="CIE Lab lightness derived from rgb, [0, 100] -> [-1, 1]"))
register_modality(Modality(
    "lab_ab", 2, "rgb", _lab_ab_normalize, derive=lambda rgb: rgb_to_lab(rgb)[..., 1:], photometric="color",
    description="CIE Lab chrominance derived from rgb, a and b each range-normalised to [-1, 1]"))


def resolve_modality(name: str, layout: Layout) -> Modality:
    """The definition of ``name`` for the file ``layout``: registered, or generic for an unknown stored array.

    Raises:
        KeyError: with a message naming what the file offers, when ``name`` can be neither read nor derived.
    """
    stored = layout.modalities
    modality = MODALITIES.get(name)
    if modality is None and name in stored:
        info = stored[name]
        low, high = info.value_range or (0.0, 1.0)
        if high <= low:
            high = low + 1.0
        modality = Modality(name, info.shape[3], name, to_range(low, high),
                            interpolation="nearest" if info.kind in ("depth", "raw_depth") else "linear",
                            description=f"stored {info.kind}, its range [{low:g}, {high:g}] -> [-1, 1]")
    if modality is None or modality.source not in stored:
        readable = sorted(set(stored) | {m.name for m in MODALITIES.values() if m.source in stored})
        why = "is not defined" if modality is None else f"needs the stored modality '{modality.source}'"
        raise KeyError(f"modality '{name}' {why}; this file offers {readable}")
    stored_channels = stored[modality.source].shape[3]
    if modality.derive is None and stored_channels != modality.channels:
        raise KeyError(f"modality '{name}' expects {modality.channels} channels, the file stores {stored_channels}")
    return modality
