"""Batched tensor kernels of the device-resident loader (:mod:`crossmodal.data.device`): counter-based random
numbers, the paired geometry (random resized crop, resize, flip), colour jitter, OpenCV's RGB -> CIE Lab and the
modalities' normalisations, each on a whole (B, C, H, W) batch on any torch device.

Each kernel reproduces what the CPU pipeline (:mod:`crossmodal.data.transforms`, albumentations and OpenCV on
one sample) does, with the differences listed in :mod:`crossmodal.data.device`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from crossmodal.data.modalities import IMAGENET_MEAN, IMAGENET_STD, MAX_DEPTH_M

# ------------------------------------------------------------------------------------ counter-based randomness
_GOLDEN = 0x9E3779B97F4A7C15


def _int64(value: int) -> int:
    """A 64-bit pattern as the signed integer torch's int64 holds."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic): equal inputs, equal outputs, on any device."""
    x = (x ^ _shift_right(x, 30)) * _int64(0xBF58476D1CE4E5B9)
    x = (x ^ _shift_right(x, 27)) * _int64(0x94D049BB133111EB)
    return x ^ _shift_right(x, 31)


def uniforms(seed: int, epoch: int, rows: Tensor, count: int) -> Tensor:
    """(B, count) float64 uniforms in [0, 1) that depend only on (seed, epoch, row, column).

    A SplitMix64 stream per (seed, epoch, row): which batch a row is in, the batch size and the process that
    draws it change nothing.
    """
    key = mix64(mix64(torch.tensor(seed, dtype=torch.int64, device=rows.device)) ^ int(epoch))
    state = mix64(key ^ rows.to(torch.int64))
    steps = torch.arange(1, count + 1, dtype=torch.int64, device=rows.device) * _int64(_GOLDEN)
    bits = _shift_right(mix64(state[:, None] + steps[None, :]), 11)  # the top 53 bits
    return bits.to(torch.float64) * 2.0 ** -53


# ------------------------------------------------------------------------------------ geometry
LINEAR, AREA, AREA_LINEAR = 0, 1, 2  # OpenCV's INTER_LINEAR; INTER_AREA shrinking; INTER_AREA enlarging an axis
CROP_DRAWS = 23  # 10 tries x (area, log ratio), then (top, left) fractions, then the flip


@dataclass(frozen=True)
class Geometry:
    """One batch's geometry: per sample a crop box of the stored picture, how images are resampled from it to
    ``size``, and whether the result is flipped left-right.

    Args:
        top, left, height, width: (B,) float64 integer-valued crop boxes, in stored pixels.
        mode: (B,) int64, ``LINEAR``, ``AREA`` or ``AREA_LINEAR`` (what OpenCV does with INTER_AREA when an axis
            is enlarged): the resampling of images (masks are always nearest).
        flip: (B,) bool.
        size: (height, width) of the output.
        whole: every crop is the whole stored picture at its size (nothing to resample; at most a flip).
    """

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    mode: Tensor
    flip: Tensor
    size: tuple[int, int]
    whole: bool = False


def whole_picture(batch: int, stored: tuple[int, int], size: tuple[int, int] | None, device: torch.device,
                  flip: Tensor | None = None) -> Geometry:
    """The stored picture resized to ``size`` (None: kept) with INTER_AREA, as the evaluation transform does."""
    height, width = stored
    size = tuple(size) if size is not None else (height, width)
    flip = flip if flip is not None else torch.zeros(batch, dtype=torch.bool, device=device)
    full = lambda value: torch.full((batch,), float(value), dtype=torch.float64, device=device)  # noqa: E731
    mode = AREA if height >= size[0] and width >= size[1] else AREA_LINEAR
    return Geometry(full(0), full(0), full(height), full(width),
                    torch.full((batch,), mode, dtype=torch.int64, device=device), flip, size, size == stored)


def random_resized_crop(u: Tensor, stored: tuple[int, int], size: tuple[int, int], scale: tuple[float, float],
                        ratio: tuple[float, float], flip: Tensor) -> Geometry:
    """albumentations' ``RandomResizedCrop`` (torchvision's rule) per sample, from ``u[:, :22]``, then ``flip``.

    Up to 10 tries of an area in ``scale`` x the picture and a log-uniform aspect ratio in ``ratio``; the first
    box that fits is placed uniformly, otherwise the central crop clamped to ``ratio`` is taken. A crop larger
    than ``size`` on an axis is shrunk with INTER_AREA, a smaller one enlarged bilinearly.
    """
    height, width = stored
    area = height * width
    tries = u[:, :20].reshape(-1, 10, 2)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * tries[..., 1])
    crop_w, crop_h = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)
    found = fits.any(1)
    crop_h, crop_w = crop_h.gather(1, first)[:, 0], crop_w.gather(1, first)[:, 0]
    top = torch.floor((height - crop_h + 1) * u[:, 20])
    left = torch.floor((width - crop_w + 1) * u[:, 21])
    # the fallback: the central crop, clamped to the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (round(width / ratio[0]), width)
    elif in_ratio > ratio[1]:
        fallback = (height, round(height * ratio[1]))
    else:
        fallback = (height, width)
    crop_h = torch.where(found, crop_h, float(fallback[0]))
    crop_w = torch.where(found, crop_w, float(fallback[1]))
    top = torch.where(found, top, float((height - fallback[0]) // 2))
    left = torch.where(found, left, float((width - fallback[1]) // 2))
    shrinks = (crop_h > size[0]) | (crop_w > size[1])
    both = (crop_h >= size[0]) & (crop_w >= size[1])
    mode = torch.where(shrinks, torch.where(both, AREA, AREA_LINEAR), LINEAR).to(torch.int64)
    return Geometry(top, left, crop_h, crop_w, mode, flip, tuple(size))


def _axis_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, mode: Tensor) -> Tensor:
    """(B, out, in) float32 resampling matrices of one axis: OpenCV's ``resize`` of the crop
    [start, start + length) to ``out_size`` pixels, per sample in ``mode``."""
    device = start.device
    i = torch.arange(out_size, dtype=torch.float64, device=device)[None, :]
    start, length = start[:, None], length[:, None]
    scale = length / out_size
    last = length - 1
    # INTER_LINEAR: half-pixel centres, the crop's border replicated
    src = torch.minimum(((i + 0.5) * scale - 0.5).clamp(min=0), last)
    low = torch.floor(src)
    frac = src - low
    # INTER_AREA where an axis is enlarged (OpenCV's own rule)
    area_low = torch.floor(i * scale)
    area_frac = (i + 1) - (area_low + 1) / scale
    area_frac = torch.where(area_frac <= 0, 0.0, area_frac - torch.floor(area_frac))
    area_frac = torch.where(area_low >= last, 0.0, area_frac)
    area_low = torch.minimum(area_low, last)
    enlarging = mode[:, None] == AREA_LINEAR
    low, frac = torch.where(enlarging, area_low, low), torch.where(enlarging, area_frac, frac)
    high = torch.minimum(low + 1, last)
    # (B, out, in) in float32: every value below is a small integer or a fraction of one pixel
    k = torch.arange(in_size, dtype=torch.float32, device=device)[None, None, :] - start[..., None].float()
    low, high, frac = low[..., None].float(), high[..., None].float(), frac[..., None].float()
    two_tap = (1 - frac) * (k == low) + frac * (k == high)
    # INTER_AREA shrinking: each output pixel averages the stored pixels its footprint overlaps
    lo, hi = (i * scale)[..., None].float(), ((i + 1) * scale)[..., None].float()
    overlap = (torch.minimum(k + 1, hi) - torch.maximum(k, lo)).clamp(min=0) * (k < length[..., None].float())
    box = overlap / scale[..., None].float()
    return torch.where(mode[:, None, None] == AREA, box, two_tap)


def _axis_nearest(start: Tensor, length: Tensor, out_size: int) -> Tensor:
    """(B, out) int64 source indices of OpenCV's INTER_NEAREST (``floor(x * in / out)``) in the crop."""
    i = torch.arange(out_size, dtype=torch.float64, device=start.device)[None, :]
    inverse = 1.0 / (out_size / length[:, None])  # as OpenCV computes it, so that floor() agrees at integers
    src = torch.minimum(torch.floor(i * inverse), length[:, None] - 1)
    return (start[:, None] + src).to(torch.int64)


def resample(x: Tensor, geometry: Geometry, nearest: bool) -> Tensor:
    """(B, C, H, W) stored pictures -> (B, C, *size) through ``geometry``: float32 bilinear / area matrices for
    images, a gather of the stored values (any dtype) for ``nearest``."""
    out_h, out_w = geometry.size
    flip = geometry.flip
    if nearest:
        rows = _axis_nearest(geometry.top, geometry.height, out_h)
        cols = _axis_nearest(geometry.left, geometry.width, out_w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        batch, channels = x.shape[:2]
        x = x.gather(2, rows[:, None, :, None].expand(batch, channels, out_h, x.shape[3]))
        return x.gather(3, cols[:, None, None, :].expand(batch, channels, out_h, out_w))
    rows = _axis_weights(geometry.top, geometry.height, x.shape[2], out_h, geometry.mode)
    cols = _axis_weights(geometry.left, geometry.width, x.shape[3], out_w, geometry.mode)
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ (x @ cols.transpose(1, 2)[:, None])


def round_like_opencv(values: Tensor, geometry: Geometry) -> Tensor:
    """Resampled integer pictures rounded as OpenCV rounds them: half up (its fixed-point bilinear and 2 x 2
    area paths), half to even (``cvRound``) when shrinking by other factors."""
    halving = (geometry.height == 2 * geometry.size[0]) & (geometry.width == 2 * geometry.size[1])
    even = ((geometry.mode == AREA) & ~halving).view(-1, 1, 1, 1)
    return torch.where(even, torch.round(values), torch.floor(values + 0.5))


def flip_only(x: Tensor, flip: Tensor) -> Tensor:
    """Flip the samples marked in ``flip`` left-right (the geometry of a training transform without a size)."""
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


# ------------------------------------------------------------------------------------ photometry
JITTER_DRAWS = 9  # apply?, brightness, contrast, saturation, hue, then four keys of the order
_GRAY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY


def _gray(x: Tensor) -> Tensor:
    return _GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of (B, 3, H, W) RGB in [0, 1] by ``shift`` (B,) turns, through HSV."""
    value, _ = x.max(1)
    delta = value - x.min(1).values
    red, green, blue = x.unbind(1)
    safe = torch.where(delta > 0, delta, 1.0)
    hue = torch.where(value == red, (green - blue) / safe,
                      torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    hue = torch.remainder(hue / 6 + shift[:, None, None], 1.0)
    saturation = torch.where(value > 0, delta / torch.where(value > 0, value, 1.0), 0.0)
    offsets = _channel_constant("hue_offsets", np.array([5.0, 3.0, 1.0], np.float32), x.device)
    k = torch.remainder(offsets + hue[:, None] * 6, 6)
    return value[:, None] - (value * saturation)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: Tensor, u: Tensor, strength: float, peak: float) -> Tensor:
    """albumentations' ``ColorJitter(strength, strength, strength, min(strength / 4, 0.5), p=0.8)`` per sample.

    ``x``: (B, C, H, W) float values in [0, ``peak``] (C is 3, or 1 for grey pictures, which get brightness and
    contrast only); ``u``: (B, JITTER_DRAWS) uniforms. Brightness, contrast, saturation and hue factors are drawn
    from [max(0, 1 - s), 1 + s] (hue: a shift in [-h, h] turns) and applied in a random order per sample, each
    clipped to [0, peak] as a uint8 picture is.
    """
    if x.shape[1] not in (1, 3):
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {x.shape[1]}")
    apply = u[:, 0] < 0.8
    low = max(0.0, 1.0 - strength)
    factors = [low + (1.0 + strength - low) * u[:, i] for i in (1, 2, 3)]
    hue_limit = min(strength / 4, 0.5)
    hue = -hue_limit + 2 * hue_limit * u[:, 4]
    order = u[:, 5:9].argsort(1)  # a uniformly random permutation of the four operations
    as_image = lambda f: f.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    for slot in range(4):
        chosen = [apply & (order[:, slot] == op) for op in range(4)]
        brightness = torch.where(chosen[0], factors[0], 1.0)
        x = (x * as_image(brightness)).clamp(0, peak)
        contrast = as_image(torch.where(chosen[1], factors[1], 1.0))
        mean = (x if x.shape[1] == 1 else _gray(x)).mean((1, 2, 3), keepdim=True)
        x = (x * contrast + mean * (1 - contrast)).clamp(0, peak)
        if x.shape[1] == 3:
            saturation = as_image(torch.where(chosen[2], factors[2], 1.0))
            x = (x * saturation + _gray(x) * (1 - saturation)).clamp(0, peak)
            shifted = _shift_hue(x / peak, torch.where(chosen[3], hue, 0.0).to(x.dtype)) * peak
            x = torch.where(chosen[3].view(-1, 1, 1, 1), shifted.clamp(0, peak), x)
    return x


# Photometric families (the names a Modality's ``photometric`` may take) -> (x, u, strength, peak) -> x
PHOTOMETRIC: dict[str, Callable[[Tensor, Tensor, float, float], Tensor]] = {"color": color_jitter}


# ------------------------------------------------------------------------------------ CIE Lab
# OpenCV converts float sRGB to Lab by trilinear interpolation in a 33^3 table of 14-bit fixed-point values,
# with 1/16-cell fixed-point weights (color_lab.cpp: RGB2Lab_f, trilinearInterpolate). The table is read from
# OpenCV itself, at its nodes, where the interpolation returns the stored values exactly.
_LAB_BASE = 1 << 14
_LAB_DIM = 33
_LAB_TABLES: dict[torch.device, Tensor] = {}


def _lab_table(device: torch.device) -> Tensor:
    """(33^3, 3) int32 fixed-point (L, a, b) at the nodes r + 33 g + 33^2 b."""
    if device not in _LAB_TABLES:
        nodes = np.arange(_LAB_DIM, dtype=np.float32) / (_LAB_DIM - 1)
        blue, green, red = np.meshgrid(nodes, nodes, nodes, indexing="ij")
        lab = cv2.cvtColor(np.stack([red, green, blue], -1).reshape(1, -1, 3), cv2.COLOR_RGB2Lab)[0]
        fixed = np.stack([lab[:, 0].astype(np.float64) * _LAB_BASE / 100,
                          (lab[:, 1].astype(np.float64) + 128) * _LAB_BASE / 256,
                          (lab[:, 2].astype(np.float64) + 128) * _LAB_BASE / 256], 1)
        _LAB_TABLES[device] = torch.from_numpy(np.rint(fixed).astype(np.int32)).to(device)
    return _LAB_TABLES[device]


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in 0..255 -> (B, 3, H, W) float32 CIE Lab as ``cv2.cvtColor(rgb / 255, COLOR_RGB2Lab)``."""
    table = _lab_table(rgb.device)
    fixed = torch.round((rgb.float() * float(np.float32(1 / 255))).clamp(0, 1) * float(_LAB_BASE)).to(torch.int64)
    cell, frac = fixed >> 9, (fixed >> 5) & 15  # 32 cells of 512, weights in 1/16 of a cell
    acc = torch.zeros(rgb.shape[0], rgb.shape[2], rgb.shape[3], 3, dtype=torch.int64, device=rgb.device)
    for corner in range(8):
        upper = [(corner >> axis) & 1 for axis in range(3)]
        node = [torch.clamp(cell[:, axis] + upper[axis], max=_LAB_DIM - 1) for axis in range(3)]
        weight = [frac[:, axis] if upper[axis] else 16 - frac[:, axis] for axis in range(3)]
        index = node[0] + _LAB_DIM * (node[1] + _LAB_DIM * node[2])
        acc += table[index] * (weight[0] * weight[1] * weight[2])[..., None]
    fixed_lab = ((acc + 2048) >> 12).float().permute(0, 3, 1, 2)
    return torch.cat([fixed_lab[:, :1] / _LAB_BASE * 100, fixed_lab[:, 1:] / _LAB_BASE * 256 - 128], 1)


# ------------------------------------------------------------------------------------ normalisations
_RGB_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_RGB_SHIFT = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
_CONSTANTS: dict[tuple[str, torch.device], Tensor] = {}


def _channel_constant(name: str, values: np.ndarray, device: torch.device) -> Tensor:
    """A (1, C, 1, 1) float32 constant, copied to each device once."""
    if (name, device) not in _CONSTANTS:
        _CONSTANTS[name, device] = torch.from_numpy(values).view(1, -1, 1, 1).to(device)
    return _CONSTANTS[name, device]


def rgb_normalize(rgb: Tensor) -> Tensor:
    """0..255 -> (x / 255 - mean) / std with the ImageNet statistics."""
    return rgb * _channel_constant("rgb_scale", _RGB_SCALE, rgb.device) - _channel_constant(
        "rgb_shift", _RGB_SHIFT, rgb.device)


def depth_normalize(depth: Tensor) -> Tensor:
    """Metres in [0, MAX_DEPTH_M] -> [-1, 1]; holes (0), NaNs and infinities -> -1."""
    depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, MAX_DEPTH_M)
    return depth * float(np.float32(2.0 / MAX_DEPTH_M)) - 1.0


def to_range(low: float, high: float) -> Callable[[Tensor], Tensor]:
    """Map [low, high] linearly onto [-1, 1] (values outside are not clipped), as
    :func:`crossmodal.data.modalities.to_range`."""
    scale, shift = np.float32(2.0 / (high - low)), np.float32(2.0 * low / (high - low) + 1.0)
    return lambda x: x * float(scale) - float(shift)
