"""The probe feature cache: a damaged file (safetensors has no checksum of its own) is rebuilt with one line
naming the file and the tensor, never reused; files are readable like the other outputs."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch

from crossmodal.eval import feature_cache
from crossmodal.eval.features import ExtractedFeatures, StageFeatures

PARTS = {"format": feature_cache.FORMAT, "encoder": "abc", "data": "s.h5", "split": "train"}


def features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ExtractedFeatures([StageFeatures("3", 2, torch.randn(40, 16, generator=generator)),
                              StageFeatures("embedding", None, torch.randn(40, 8, generator=generator))],
                             np.arange(40) % 4)


class Probe:
    """``cached`` as probe calls it: what it said, and how often it had to encode."""

    def __init__(self, path):
        self.path, self.lines, self.encoded = path, [], 0

    def __call__(self):
        def extract():
            self.encoded += 1
            return features()
        return feature_cache.cached(str(self.path), PARTS, extract, "cpu", self.lines.append)


def raise_bytes(path, tensor, itemsize, byte, count=20):
    """Add 1 to byte ``byte`` of ``count`` values of ``tensor`` in the file, in place (for float32, byte 3
    holds the sign and the high exponent bits)."""
    data = bytearray(path.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    begin = 8 + header_size + json.loads(data[8:8 + header_size])[tensor]["data_offsets"][0]
    for value in range(count):
        data[begin + itemsize * value + byte] = (data[begin + itemsize * value + byte] + 1) % 256
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tensor", ["3", "embedding", feature_cache.LABELS])
def test_a_damaged_tensor_is_named_and_rebuilt_never_reused(tmp_path, tensor):
    path = tmp_path / "features-train.safetensors"
    probe = Probe(path)
    intact = probe()
    assert probe.encoded == 1 and probe() is not None and probe.lines == [f"feature cache {path}: reused"]
    if tensor == feature_cache.LABELS:
        raise_bytes(path, tensor, itemsize=8, byte=0)  # int64 class labels
    else:
        raise_bytes(path, tensor, itemsize=4, byte=3)  # float32 features: 20 raised exponent bytes
    probe.lines.clear()
    rebuilt = probe()
    assert probe.lines == [f"feature cache {path}: damaged: tensor {tensor} fails its CRC-32 check; rebuilding"]
    assert probe.encoded == 2
    assert all(torch.equal(a.values, b.values) for a, b in zip(rebuilt.stages, intact.stages))
    probe.lines.clear()
    probe()  # the rebuilt file is intact again
    assert probe.lines == [f"feature cache {path}: reused"] and probe.encoded == 2


def test_a_cache_written_without_checksums_is_rebuilt_once(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "f.safetensors"
    probe = Probe(path)
    probe()
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    del meta["crc32"]
    save_file(load_file(str(path)), str(path), metadata=meta)  # as the previous crossmodal wrote it
    probe.lines.clear()
    probe()
    probe()
    assert probe.lines == [f"feature cache {path}: written without checksums (by an older crossmodal); rebuilding",
                           f"feature cache {path}: reused"]


def test_cache_files_are_readable_like_the_other_outputs(tmp_path):
    mask = os.umask(0o022)
    try:
        path = tmp_path / "f.safetensors"
        Probe(path)()
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    finally:
        os.umask(mask)


def test_a_cache_path_that_cannot_take_a_file_is_one_line_naming_it(tmp_path):
    from crossmodal.errors import DataError

    path = tmp_path / "features.safetensors"
    path.mkdir()  # a folder where the file should go: no place error, still one line
    with pytest.raises(DataError) as error:
        feature_cache.save(str(path), PARTS, features())
    assert str(error.value) == f"{path}: cannot write the feature cache: Is a directory"
    assert os.listdir(tmp_path) == ["features.safetensors"] and os.listdir(path) == []
