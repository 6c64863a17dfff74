"""Training checkpoints: everything a run needs to continue exactly, written atomically, read back safely.

A checkpoint is one ``torch.save``-d dict of tensors and plain values (so ``torch.load(weights_only=True)``
reads it): the trainable modules' state (student, heads, every distiller's banks and normalisation
constants, its sampler's generator), the optimizer, the position (epoch, batch within the epoch, step),
the random states of torch, CUDA, numpy and Python, the resolved config it was written for, and the identity of
its data file (:func:`data_file_identity`), so that a data file regenerated at the same path is not trained on
as if it were the same.

It is read back only after the CRC-32 of every member of its zip archive is checked
(:func:`~crossmodal.torch_archive.damaged_member`): torch.load does not check them, and a flipped byte or a
zeroed disk block would otherwise resume with different weights.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from crossmodal.config import flatten
from crossmodal.errors import ConfigError, DataError
from crossmodal.files import atomic_output
from crossmodal.torch_archive import damaged_member


class DamagedCheckpoint(DataError):
    """A checkpoint whose zip CRC-32s fail: ``damage`` says which member (and tensor). The line names the way on
    for a run continued with ``--resume``; a verb that continues by running the same command (``segment``)
    rewords it, since for it starting the run again means removing the folder first."""

    def __init__(self, path: str, damage: str) -> None:
        self.damage = damage
        super().__init__(path, f"damaged: {damage}; resume from an intact copy, or start the run again")

FORMAT = "crossmodal-checkpoint/1"


def rng_state() -> dict[str, Any]:
    """The global random states, as tensors and plain values."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [version, list(mt_state), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, *, verb: str, config: Mapping[str, Any], module: nn.Module,
                    optimizer: torch.optim.Optimizer, epoch: int, batch_in_epoch: int, step: int,
                    extra: Mapping[str, Any] | None = None, data_file: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint to ``path`` through a temporary name, so a kill mid-write leaves the previous one.

    ``data_file``: the training data file's :func:`data_file_identity`, compared when the run resumes."""
    payload = {"format": FORMAT, "verb": verb, "config": dict(config), "model": module.state_dict(),
               "optimizer": optimizer.state_dict(), "epoch": int(epoch), "batch_in_epoch": int(batch_in_epoch),
               "step": int(step), "rng": rng_state(), "extra": dict(extra or {}), "data_file": dict(data_file or {})}
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def _load_error(err: BaseException, path: str) -> str:
    """torch.load's error in whole words: a truncated archive said as such, else the error's first sentence."""
    import zipfile

    text = " ".join(str(err).split())
    try:
        with open(path, "rb") as handle:
            archive_start = handle.read(4) == b"PK\x03\x04"
    except OSError:
        archive_start = False
    if archive_start and not zipfile.is_zipfile(path) or "central directory" in text:
        return "truncated or damaged (it is not a complete archive); an interrupted copy or a full disk?"
    sentence = re.split(r"(?<=[.!?]) ", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 300 else sentence[:297].rsplit(" ", 1)[0] + " ..."


def data_file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What tells a regenerated data file from the one a run started on: its size and the ``created`` and
    ``num_samples`` attributes ``prepare`` writes ({} when there is no such file). Not its modification time, as
    the teacher cache uses: a data set copied to a node's scratch disk with its run resumes as it should."""
    try:
        identity: dict[str, Any] = {"size": os.path.getsize(path)}
    except OSError:
        return {}
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            identity.update({key: _plain(handle.attrs[key]) for key in ("created", "num_samples")
                             if key in handle.attrs})
    except (OSError, ValueError):
        pass  # not an HDF5 file: the data loader says so in its words
    return identity


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return value.decode() if isinstance(value, bytes) else value


def data_file_change(data_path: str, saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``['data file PATH changed since the checkpoint (created A -> B, size ...)']``, or [] when nothing
    recorded differs (a checkpoint written before identities were recorded holds none)."""
    if not saved or not current:
        return []
    changed = [f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(set(saved) | set(current))
               if saved.get(key) != current.get(key)]
    return [f"data file {data_path} changed since the checkpoint ({', '.join(changed)})"] if changed else []


def load_checkpoint(path: str | os.PathLike, *, verb: str, config: Mapping[str, Any],
                    may_change: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None,
                    data_file: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``, its CRC-32s checked first) and check that it belongs to this
    verb, config and data file (``data_file``: the file's :func:`data_file_identity` now).

    Raises:
        DataError: unreadable, damaged, not a crossmodal checkpoint, or written by another verb.
        ConfigError: written for another config or data file (the first differences are named).
    """
    path = os.fspath(path)
    try:
        damage = damaged_member(path)
    except FileNotFoundError:
        raise DataError(path, "no such checkpoint") from None
    except OSError as err:
        raise DataError(path, f"not a readable checkpoint: {err.strerror or err}") from None
    if damage:
        raise DamagedCheckpoint(path, damage)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "no such checkpoint") from None
    except Exception as err:  # unpickling errors come in many types; report one line
        raise DataError(path, f"not a readable checkpoint: {_load_error(err, path)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(path, f"not a crossmodal checkpoint (expected format {FORMAT})")
    if payload.get("verb") != verb:
        raise DataError(path, f"written by 'crossmodal {payload.get('verb')}', not 'crossmodal {verb}'")
    saved_config = payload.get("config")
    if not isinstance(saved_config, dict):
        raise DataError(path, "a damaged checkpoint: it holds no config")
    changed_data = data_file_change(flatten(config).get("data.path", "?"), payload.get("data_file") or {},
                                    data_file or {})
    differences = changed_data + config_differences(saved_config, config, may_change, defaults)
    if differences:
        against = "another config" if len(differences) > len(changed_data) else "another data file"
        what_to_do = "; restore the file it started on, or start a new run with --out" if changed_data else ""
        raise ConfigError(f"{path}: written for {against}: {'; '.join(differences[:3])}"
                          + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "") + what_to_do)
    return payload


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       may_change: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``'key: saved -> current'`` for every flattened key that differs, except those in ``may_change``.

    A key absent from ``saved`` whose current value is its value in ``defaults`` (a config tree of defaults) is
    not a difference: it is a setting added by a later version, and the saved run behaved as its default.
    """
    old, new = flatten(saved), flatten(current)
    absent = object()  # unlike None, which is a value
    for key, value in flatten(defaults or {}).items():
        if key not in old and key in new and new[key] == value:
            old[key] = value

    def shown(value: Any) -> str:
        return "(absent)" if value is absent else repr(value)

    return [f"{key}: {shown(old.get(key, absent))} -> {shown(new.get(key, absent))}"
            for key in sorted(set(old) | set(new))
            if key not in may_change and (key not in old or key not in new or old[key] != new[key])]


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Strict ``load_state_dict`` whose mismatch is one line naming the first differing keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [key for key in own if key in state and isinstance(state[key], torch.Tensor)
              and tuple(state[key].shape) != tuple(own[key].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(keys[:3])}" + (" ..." if len(keys) > 3 else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
                 if keys]
        raise DataError(path, f"the checkpoint's model state does not fit this architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)

