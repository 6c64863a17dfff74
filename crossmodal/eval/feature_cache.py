"""Probe features kept on disk: one safetensors file per split, rebuilt with a one-line reason when stale.

A file records what its contents depend on (the encoder's fingerprint, the data file, the split's rows, the
modality, the label set, the stages and the pooling) and is reused only when all of them match, so ``probe``
and the studies re-probe a checkpoint without re-encoding, and never read features of another encoder.
Files are written to a temporary name and renamed when complete (readable like the other outputs, 0644 under
the usual umask: safetensors alone makes them 0600); read back with safetensors (no pickle).

safetensors has no checksum, so each tensor's CRC-32 is kept in the metadata and checked on every reuse: a
damaged file (20 raised exponent bytes gave wrong probe results, reported as ``reused``) is rebuilt with one
line naming the file and the tensor, as a stale one is. Rebuilding, not an error: the cache holds nothing that
cannot be recomputed, and the probe then runs on correct features. A file written before the CRC-32s existed
is rebuilt once.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from crossmodal.cache_key import data_parts, digest
from crossmodal.errors import DataError
from crossmodal.eval.features import ExtractedFeatures, StageFeatures
from crossmodal.files import atomic_output, ensure_folder, os_reason, readable_like_other_outputs
from crossmodal.models.weights import CRC_KEY, check_tensor_crc32s, tensor_crc32s

FORMAT = "crossmodal-features/1"
LABELS = "__labels__"


def key_parts(encoder_fingerprint: str, data_path: str, split: str, rows: np.ndarray, modality: str,
              label_name: str, stages: list[int], pool: str, pooled_size: Optional[int], max_dim: int) -> dict:
    """What one split's features depend on, by name (the names appear in the 'stale' message)."""
    return {"format": FORMAT, "encoder": encoder_fingerprint, **data_parts(data_path, split, rows),
            "modality": modality, "labels": label_name, "stages": list(stages),
            "pooling": {"pool": pool, "pooled_size": pooled_size, "max_dim": max_dim}}


def cache_path(folder: str, split: str, modality: str, label_name: str, pool: str) -> str:
    """The file of one split's features in ``folder``."""
    return os.path.join(folder, f"features-{split}-{modality}-{label_name}-{pool}.safetensors")


def load(path: str, parts: Mapping[str, Any], device: str | torch.device) -> tuple[Optional[ExtractedFeatures], str]:
    """The features stored at ``path`` when they were made for ``parts``; else None and why not."""
    from safetensors import SafetensorError, safe_open

    if not os.path.exists(path):
        return None, "none yet"
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                return None, "not a feature cache"
            if meta.get("key") != digest(parts):
                old = json.loads(meta.get("key_parts", "{}"))
                changed = [name for name in parts if old.get(name) != parts[name]] or ["key"]
                return None, f"{', '.join(changed)} changed"
            if CRC_KEY not in meta:
                return None, "written without checksums (by an older crossmodal)"
            layout = json.loads(meta["stages"])
            tensors = {name: handle.get_tensor(name) for name in [LABELS] + [entry["name"] for entry in layout]}
        check_tensor_crc32s(path, tensors, meta)
        labels = tensors[LABELS].numpy().astype(np.int64)
        stages = [StageFeatures(entry["name"], entry["pooled_size"], tensors[entry["name"]].to(device))
                  for entry in layout]
    except DataError as err:  # "damaged: tensor stage_3 fails its CRC-32 check; restore ...": a cache rebuilds
        return None, err.problem.split(";")[0]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        return None, f"unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if any(len(stage.values) != len(labels) for stage in stages):
        return None, "its arrays disagree in length"
    return ExtractedFeatures(stages, labels), ""


def save(path: str, parts: Mapping[str, Any], features: ExtractedFeatures) -> None:
    """Write ``features`` to ``path`` atomically with the key of ``parts``."""
    from safetensors.torch import save_file

    tensors = {stage.name: stage.values.detach().to("cpu").contiguous() for stage in features.stages}
    tensors[LABELS] = torch.from_numpy(np.ascontiguousarray(features.labels, dtype=np.int64))
    meta = {"format": FORMAT, "key": digest(parts), "key_parts": json.dumps(parts, sort_keys=True),
            "stages": json.dumps([{"name": s.name, "pooled_size": s.pooled_size} for s in features.stages]),
            CRC_KEY: tensor_crc32s(tensors)}
    ensure_folder(os.path.dirname(os.path.abspath(path)))
    try:
        with atomic_output(path) as temporary:
            save_file(tensors, temporary, metadata=meta)
            readable_like_other_outputs(temporary)
    except OSError as err:
        raise DataError(path, f"cannot write the feature cache: {os_reason(err)}") from None


def cached(path: Optional[str], parts: Mapping[str, Any], extract: Callable[[], ExtractedFeatures],
           device: str | torch.device, say: Callable[[str], None]) -> ExtractedFeatures:
    """The features at ``path`` when valid for ``parts``; otherwise ``extract()``, saved there (when ``path``).

    A stale or unreadable file is rebuilt with one line through ``say`` naming it and the reason.
    """
    if path is None:
        return extract()
    features, reason = load(path, parts, device)
    if features is not None:
        say(f"feature cache {path}: reused")
        return features
    if reason != "none yet":
        say(f"feature cache {path}: {reason}; rebuilding")
    features = extract()
    save(path, parts, features)
    return features
