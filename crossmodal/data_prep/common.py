"""What every converter shares: resizing, reading image files and the common flags (the progress bar is
:func:`crossmodal.progress.sample_bar`)."""
from __future__ import annotations

import argparse
from typing import Iterable

import cv2
import numpy as np

from crossmodal.data.codecs import CODECS, DEFAULT_CODEC, codec_help
from crossmodal.data.format import DEPTH_STORAGE
from crossmodal.errors import DataError


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --size, --overwrite and --compression, identical for every source."""
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the paired HDF5 file to write")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="resize every sample to H x W: images by area (bilinear when enlarging), labels and "
                             "depth by nearest neighbour (no depth blended across a hole, no class invented)")
    add_output_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--overwrite, --compression and --depth-storage."""
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--compression", choices=tuple(CODECS), default=DEFAULT_CODEC,
                        help=f"the codec of every chunk (each also gets a checksum): {codec_help()}")
    parser.add_argument("--depth-storage", choices=tuple(DEPTH_STORAGE), default="uint16",
                        help="how depth in metres is stored: uint16 millimetres (default; beyond 65.535 m is "
                             "clipped and counted, NaN becomes a hole), float16 or float32")


MAX_SIDE = 16384


def checked_size(size: Iterable[int] | None) -> tuple[int, int] | None:
    """``--size H W`` as a tuple, each side in 1 .. MAX_SIDE."""
    if size is None:
        return None
    height, width = (int(v) for v in size)
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise DataError("--size", f"must be two integers in 1..{MAX_SIDE}, got {height} {width}")
    return height, width


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Area resampling when shrinking photographs, bilinear when enlarging; keeps a trailing channel axis."""
    shrinking = size is not None and size[0] * size[1] < image.shape[0] * image.shape[1]
    return _resize(image, size, cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_nearest(array: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resampling for labels and depth: no invented classes, no depth blended into holes."""
    return _resize(array, size, cv2.INTER_NEAREST)


def _resize(array: np.ndarray, size: tuple[int, int] | None, interpolation: int) -> np.ndarray:
    if size is None or array.shape[:2] == tuple(size):
        return array
    resized = cv2.resize(array, (size[1], size[0]), interpolation=interpolation)
    if array.ndim == 3 and resized.ndim == 2:
        resized = resized[..., None]
    return resized


def decode_image(data: bytes | np.ndarray, origin: str) -> np.ndarray:
    """Decode an encoded image file as stored (8/16 bit, 1/3/4 channels); colour comes back as RGB(A)."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buffer.size == 0:
        raise DataError(origin, "is an empty file")
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise DataError(origin, "cannot decode the image (damaged or not an image file)")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def read_image(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            return decode_image(handle.read(), path)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None


def to_rgb8(image: np.ndarray, origin: str) -> np.ndarray:
    """Any decoded image -> uint8 RGB: 16-bit scaled down, alpha dropped, grey replicated to three channels
    (as torchvision's loaders do for the odd grey picture in a colour data set)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DataError(origin, f"expected a colour or grey image, found shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(origin, f"unsupported image dtype {image.dtype}")
    return image
