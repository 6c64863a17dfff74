"""Paired transforms: one geometric pipeline shared by every modality and mask, then per-modality photometry.

Geometry (random resized crop, horizontal flip, resize) is one albumentations ``Compose`` whose
``additional_targets`` declare every array of the sample, with ``strict=True`` so that an undeclared key is an
error instead of a silently untransformed modality. Arrays that must not be blended (segmentation masks, raw
depth with holes) are declared as masks and resampled nearest-neighbour; images are resampled bilinearly
(area when shrinking).

Randomness comes from a per-sample seed chosen by the reader (from its seed, the epoch and the sample), so a
sample's augmentation does not depend on the DataLoader worker that loads it, and a resumed run repeats it.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI on import

from dataclasses import dataclass  # noqa: E402
from typing import Callable  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

Array = np.ndarray


def _color_jitter(strength: float) -> A.BasicTransform:
    return A.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(strength / 4, 0.5),
                         p=0.8)


# Photometric families a Modality can name; each maps a strength to one albumentations transform.
PHOTOMETRIC: dict[str, Callable[[float], A.BasicTransform]] = {"color": _color_jitter}


@dataclass(frozen=True)
class PairedTransform:
    """Paired augmentation for a dict of HWC / HW arrays.

    Args:
        size: output (height, width); None keeps the stored size (then ``train`` only flips).
        train: random crop + flip + photometry; otherwise a deterministic resize.
        scale: area range of the random resized crop, relative to the input.
        ratio: aspect-ratio range of the random resized crop.
        hflip: flip horizontally with probability 1/2 when training.
        color_jitter: strength of the ``"color"`` family (0 disables it).

    Examples:
        >>> transform = PairedTransform(size=(64, 64), train=True)
        >>> out = transform.geometric({"rgb": rgb, "seg13": seg}, nearest={"seg13"}, seed=3)
        >>> rgb = transform.photometric("color", out["rgb"], seed=4)
    """

    size: tuple[int, int] | None = None
    train: bool = True
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    color_jitter: float = 0.4

    def __post_init__(self) -> None:
        for name in ("size", "scale", "ratio"):  # accept lists (from YAML) and keep the transform hashable
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    def _geometric_ops(self) -> list[A.BasicTransform]:
        if self.train and self.size is not None:
            ops = [A.RandomResizedCrop(size=self.size, scale=self.scale, ratio=self.ratio,
                                       interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                       area_for_downscale="image")]
        elif self.size is not None:
            ops = [A.Resize(*self.size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)]
        else:
            ops = []
        if self.train and self.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        return ops

    def geometric(self, arrays: dict[str, Array], nearest: set[str] | frozenset[str], seed: int) -> dict[str, Array]:
        """Apply one random geometry to every array; names in ``nearest`` are resampled nearest-neighbour."""
        # OpenCV cannot resample float16: widen it (the values are unchanged)
        arrays = {name: a.astype(np.float32) if a.dtype == np.float16 else a for name, a in arrays.items()}
        targets = {name: "mask" if name in nearest else "image" for name in arrays}
        primary = next((name for name, target in targets.items() if target == "image"), None)
        compose = geometric_compose(self, tuple(sorted(targets.items())), primary)
        inputs = {name: array for name, array in arrays.items() if name != primary}
        first = next(iter(arrays.values()))
        # albumentations needs an "image"; when every array is a mask, a 1-byte-per-pixel stand-in serves.
        inputs["image"] = arrays[primary] if primary else np.zeros(first.shape[:2] + (1,), np.uint8)
        compose.set_random_seed(seed)
        result = compose(**inputs)
        out = {name: result[name] for name in arrays if name != primary}
        if primary:
            out[primary] = result["image"]
        return out

    def photometric(self, family: str | None, array: Array, seed: int) -> Array:
        """Apply the photometric family ``family`` (None: identity) to one array."""
        if family is None or not self.train or self.color_jitter <= 0:
            return array
        if family not in PHOTOMETRIC:
            raise KeyError(f"unknown photometric family '{family}'; known: {sorted(PHOTOMETRIC)}")
        compose = _photometric_compose(family, self.color_jitter)
        compose.set_random_seed(seed)
        return compose(image=array)["image"]


_CACHE: dict[tuple, A.Compose] = {}


def geometric_compose(transform: PairedTransform, targets: tuple[tuple[str, str], ...],
                      primary: str | None) -> A.Compose:
    """The (cached) albumentations pipeline of ``transform``'s geometry for these (name, target kind) pairs,
    ``primary`` passed as ``image``; strict, so a key it was not built for is an error, never passed through."""
    key = (transform, targets, primary)
    if key not in _CACHE:
        additional = {name: target for name, target in targets if name != primary}
        _CACHE[key] = A.Compose(transform._geometric_ops(), additional_targets=additional, strict=True)
    return _CACHE[key]


def _photometric_compose(family: str, strength: float) -> A.Compose:
    key = ("photometric", family, strength)
    if key not in _CACHE:
        _CACHE[key] = A.Compose([PHOTOMETRIC[family](strength)], strict=True)
    return _CACHE[key]
