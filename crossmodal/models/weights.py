"""Reading weight files into timm models: safely (never unpickling code), strictly, and adapted as timm does.

The rules follow timm's ``load_pretrained``: a first convolution with another input-channel count is adapted
with ``adapt_input_conv`` (summed for 1 channel, repeated and rescaled otherwise) when the caller asks for it
(``adapt_input=True``: initialising from weights of another modality) and refused otherwise, and a classifier of
another size is dropped in favour of the model's fresh head (kept too when the file is a headless backbone),
unless the load is ``exact`` (a finished run's weights evaluated as they are). BatchNorm
``num_batches_tracked`` counters a file lacks are taken from the model. Unlike a ``strict=False`` load, every
other missing, unexpected or mis-shaped key is an error that names the keys.

Files exported by crossmodal carry their encoder config in their metadata (:func:`stored_config`);
:func:`config_mismatch` words how it differs from the config a file is loaded as. They also carry a CRC-32 per
tensor (:func:`tensor_crc32s`), checked on every read: safetensors has no checksum of its own, so a zeroed disk
block would otherwise load as zero weights. Files written before (and other programs' files) load unchecked;
the zip CRC-32s of a ``torch.save``-d file are checked as a checkpoint's are.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from crossmodal.checksums import crc32
from crossmodal.errors import DataError
from crossmodal.models.small_input import first_conv_names

# Containers that training scripts wrap a state dict in, unwrapped in this order.
CONTAINER_KEYS = ("state_dict", "model")
MAX_LISTED = 5
# The global torch's weights_only unpickler refused, in both of its phrasings: "Unsupported global: GLOBAL x.y
# was not an allowed global by default" and "Trying to load unsupported GLOBAL posix.system whose module ...".
REFUSED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)
# BatchNorm's batch counter: only read when momentum=None, and often left out of published checkpoints.
BATCH_COUNTER = "num_batches_tracked"
# The encoder config keys that decide what a weight file means, in the order a mismatch names them.
IDENTITY_KEYS = ("name", "in_chans", "num_classes", "small_input", "input_norm")
# The metadata key of the per-tensor CRC-32s: JSON {tensor: 8 hex digits}.
CRC_KEY = "crc32"


class InputChannelsMismatch(DataError):
    """A weight file's first convolution takes another number of input channels than the model, and the load
    was not asked to adapt it (``adapt_input``). Callers reword it with the setting that allows the adaptation.

    Attributes:
        key: the first convolution's weight (``conv1.weight``); file_chans, model_chans: the two channel counts.
    """

    def __init__(self, path: str | os.PathLike, key: str, file_chans: int, model_chans: int) -> None:
        self.key, self.file_chans, self.model_chans = key, int(file_chans), int(model_chans)
        super().__init__(path, f"its first convolution {key} takes {file_chans} input channel"
                               f"{'' if file_chans == 1 else 's'}, the model {model_chans}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: ``.safetensors``, or a ``torch.save``-d state dict loaded with
    ``weights_only=True`` (a file that needs arbitrary unpickling is refused, never run).

    A ``{'state_dict': ...}`` or ``{'model': ...}`` container is unwrapped and a DDP ``module.`` prefix is
    stripped.

    Args:
        path: the weight file.

    Raises:
        DataError: the file is missing, unreadable, not a weight file, or needs unsafe unpickling.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "no such weights file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, "pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                state: Any = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # safetensors raises its own error types, and OSError
            raise DataError(path, f"not a readable safetensors file ({_first_line(err)})") from None
        check_tensor_crc32s(path, state, metadata)
    else:
        from crossmodal.torch_archive import damaged_member

        damage = damaged_member(path)
        if damage:
            raise DataError(path, f"damaged: {damage}; restore an intact copy")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            unsafe = REFUSED_GLOBAL.search(str(err))
            if unsafe:
                name = unsafe.group(1).rstrip(".,;:")
                raise DataError(path, f"refused: it holds {name}, which only unsafe unpickling (weights_only=False) "
                                      f"would load; save a state dict of tensors or a .safetensors file instead"
                                ) from None
            raise DataError(path, "not a PyTorch weights file (its pickle cannot be read)") from None
        except Exception as err:  # zip/pickle corruption surfaces as RuntimeError, EOFError, KeyError...
            raise DataError(path, f"not a readable PyTorch weights file ({type(err).__name__}: "
                                  f"{_first_line(err)})") from None
    for key in CONTAINER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise DataError(path, f"holds no state dict (found {type(state).__name__})")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise DataError(path, f"is not a state dict of tensors (key {name!r} holds {type(value).__name__})")
    if all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: value for name, value in state.items()}
    return dict(state)


def tensor_crc32s(state: Mapping[str, torch.Tensor]) -> str:
    """The metadata value recording each tensor's CRC-32 (of its bytes, as safetensors stores them)."""
    return json.dumps({key: f"{_crc32(value):08x}" for key, value in sorted(state.items())})


def check_tensor_crc32s(path: str, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Compare the tensors read from ``path`` with the CRC-32s its metadata records (none recorded: nothing
    to compare, a file written before or by another program).

    Raises:
        DataError: ``PATH: damaged: tensor KEY fails its CRC-32 check ...``, or unreadable CRC metadata.
    """
    if CRC_KEY not in metadata:
        return
    try:
        recorded = json.loads(metadata[CRC_KEY])
        recorded = {str(key): int(value, 16) for key, value in recorded.items()}
    except (ValueError, TypeError, AttributeError):
        raise DataError(path, f"damaged: its {CRC_KEY!r} metadata is not a JSON mapping of hex CRC-32s") from None
    for key in sorted(state):
        if key in recorded and _crc32(state[key]) != recorded[key]:
            raise DataError(path, f"damaged: tensor {key} fails its CRC-32 check; restore an intact copy")


def _crc32(tensor: torch.Tensor) -> int:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def load_weights(model: nn.Module, path: str | os.PathLike, adapt_input: bool = False,
                 exact: bool = False) -> list[str]:
    """Load a weight file into a timm model, strictly, adapting what timm's own loader adapts.

    - the first convolution (``pretrained_cfg['first_conv']``) of another input-channel count is converted with
      timm's ``adapt_input_conv``, from the file's channel count to the model's, when ``adapt_input`` is true,
      and is an :class:`InputChannelsMismatch` otherwise;
    - the classifier (``pretrained_cfg['classifier']``) is dropped when the model has none (``num_classes=0``),
      and dropped with a warning, keeping the model's freshly initialised head, when its size differs;
    - a file without any classifier (a backbone saved with ``num_classes=0``) keeps the model's freshly
      initialised head, with a warning;
    - BatchNorm ``num_batches_tracked`` counters the file lacks are taken from the model;
    - anything else that does not match is a :class:`DataError` naming the keys.

    With ``exact`` (evaluating a finished run's weights) nothing is adapted: a classifier of another size, or
    none, is a mismatch too.

    Args:
        model: a timm model (with ``pretrained_cfg``), changed in place.
        path: the weight file, see :func:`read_state_dict`.
        adapt_input: adapt a first convolution of another input-channel count (initialising from weights of
            another modality); ignored with ``exact``.
        exact: the file must be this model's, as is.

    Returns:
        One line per adaptation made (empty when the file matched as is).

    Raises:
        InputChannelsMismatch: the first convolution's input channels differ and may not be adapted.
        DataError: the file cannot be read or does not match the model.

    Examples:
        >>> model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=0)
        >>> load_weights(model, "resnet18_rgb.safetensors", adapt_input=True)
        ['adapted conv1.weight from 3 to 1 input channels', "dropped the file's classifier fc (the model has no head)"]
    """
    return load_state(model, read_state_dict(path), path, adapt_input=adapt_input, exact=exact)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, adapt_input: bool = False,
               exact: bool = False) -> list[str]:
    """:func:`load_weights` of a state dict already read (``path``: the file it came from, for the messages)."""
    from timm.models._manipulate import adapt_input_conv

    state = dict(state)
    own = model.state_dict()
    notes: list[str] = []
    for conv in first_conv_names(model):
        key = conv + ".weight"
        if key not in state or key not in own or state[key].ndim != 4 or own[key].ndim != 4:
            continue
        file_chans, model_chans = state[key].shape[1], own[key].shape[1]
        if file_chans != model_chans:
            if exact or not adapt_input:
                raise InputChannelsMismatch(path, key, file_chans, model_chans)
            try:
                state[key] = adapt_input_conv(model_chans, state[key], base_chans=file_chans)
            except (NotImplementedError, AssertionError, ValueError) as err:
                raise DataError(path, f"cannot adapt {key} from {file_chans} to {model_chans} input channels "
                                      f"({_first_line(err)})") from None
            notes.append(f"adapted {key} from {file_chans} to {model_chans} input channels")
    fresh_heads = [] if exact else _adapt_classifiers(model, state, own, notes)
    _fill_batch_counters(state, own, notes)
    problems = _mismatches(state, own)
    if problems:
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise DataError(path, f"does not match {name}: {'; '.join(problems)}")
    for note in fresh_heads:
        warnings.warn(f"{os.fspath(path)}: {note}", stacklevel=2)
    model.load_state_dict(state, strict=True)
    return notes


def input_adaptations(notes: Sequence[str]) -> list[str]:
    """The notes of :func:`load_weights` that tell of an adapted first convolution."""
    return [note for note in notes if note.startswith("adapted ") and note.endswith(" input channels")]


def read_metadata(path: str | os.PathLike, any_name: bool = False) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} for another file or one without metadata).

    Args:
        any_name: read ``path`` as safetensors whatever its name ends with.

    Raises:
        DataError: a ``.safetensors`` file (with ``any_name``: any file) that cannot be read.
    """
    path = os.fspath(path)
    if not (any_name or path.endswith(".safetensors")) or not os.path.isfile(path):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a file that is not one
        raise DataError(path, f"not a readable safetensors file ({_first_line(err)})") from None


def stored_config(path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None) -> Optional[dict[str, Any]]:
    """The encoder config a file exported by crossmodal records (``Encoder(**config)`` rebuilds its model), or
    None for a file without crossmodal metadata (a plain timm or PyTorch state dict).

    Raises:
        DataError: unreadable metadata.
    """
    metadata = read_metadata(path) if metadata is None else metadata
    if "encoder" in metadata:
        try:
            config = json.loads(metadata["encoder"])
        except (ValueError, TypeError):
            config = None
        if not isinstance(config, dict):
            raise DataError(path, "its 'encoder' metadata is not a JSON mapping")
        return config
    if "timm_name" in metadata and "in_chans" in metadata:  # written before the full config was recorded
        try:
            return {"name": metadata["timm_name"], "in_chans": int(metadata["in_chans"]),
                    "num_classes": int(metadata.get("num_classes", 0)),
                    "small_input": metadata.get("small_input") == "true"}
        except ValueError:
            raise DataError(path, "its in_chans / num_classes metadata are not integers") from None
    return None


def config_mismatch(stored: Mapping[str, Any], expected: Mapping[str, Any], against: str,
                    keys: Optional[Sequence[str]] = None, stored_modality: Optional[str] = None,
                    expected_modality: Optional[str] = None) -> Optional[str]:
    """How a weight file's recorded encoder config differs from the one it is loaded as, in words, or None.

    Args:
        stored: the file's config (:func:`stored_config`); expected: the config it is loaded as.
        against: what says ``expected`` (``the run's model card``, ``teacher.encoder``).
        keys: the keys compared (default: every key either has; a key set to None counts as absent, and a
            recorded key with its default value as equal when the other lacks it).
        stored_modality, expected_modality: named beside the input channels when known.

    Examples:
        >>> config_mismatch({"name": "resnet18", "in_chans": 3}, {"name": "resnet18", "in_chans": 1},
        ...                 "the run's model card", None, "rgb", "depth")
        "its encoder has 3 input channels (rgb), the run's model card says 1 input channel (depth)"
    """
    defaults = {"num_classes": 0, "small_input": False}
    a, b = _plain(stored), _plain(expected)
    names = list(keys) if keys is not None else (
        [k for k in IDENTITY_KEYS if k in a or k in b] + sorted((set(a) | set(b)) - set(IDENTITY_KEYS)))
    differ = [k for k in names if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k))]
    if not differ:
        return None
    ours = " and ".join(_described(k, a.get(k, defaults.get(k)), stored_modality) for k in differ)
    theirs = " and ".join(_described(k, b.get(k, defaults.get(k)), expected_modality) for k in differ)
    return f"its encoder has {ours}, {against} says {theirs}"


def check_recorded_config(weights: str, expected: Mapping[str, Any], against: str,
                          keys: Optional[Sequence[str]] = None, expected_modality: Optional[str] = None) -> None:
    """Refuse a file exported by crossmodal whose recorded encoder config differs from ``expected`` on ``keys``
    (default: every key); a file without crossmodal metadata passes (its tensors are checked when loaded).

    Raises:
        DataError: ``WEIGHTS: its encoder has ..., AGAINST says ...``.
    """
    metadata = read_metadata(weights)
    stored = stored_config(weights, metadata)
    if stored is None:
        return
    problem = config_mismatch(stored, expected, against, keys, metadata.get("modality"), expected_modality)
    if problem:
        raise DataError(weights, problem)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as JSON would hold it (tuples as lists), without None values."""
    return {k: v for k, v in json.loads(json.dumps(dict(config), default=repr)).items() if v is not None}


def _described(key: str, value: Any, modality: Optional[str]) -> str:
    if value is None:
        return f"no {key}"
    if key == "in_chans":
        return f"{value} input channel{'' if value == 1 else 's'}" + (f" ({modality})" if modality else "")
    if key == "name":
        return f"architecture {value}"
    if key == "num_classes":
        return f"{value} classes" if value else "no classifier"
    return f"{key} {json.dumps(value)}"


def _adapt_classifiers(model: nn.Module, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                       notes: list[str]) -> list[str]:
    """Drop or replace the file's classifier (``pretrained_cfg['classifier']``) in ``state`` as timm does, and keep
    the model's fresh head when the file has none (a backbone saved with ``num_classes=0``).

    Appends one note per change to ``notes``; returns the notes about fresh heads, which deserve a warning.
    """
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    fresh = []
    for head in (classifiers,) if isinstance(classifiers, str) else classifiers:
        keys = [k for k in (head + ".weight", head + ".bias") if k in state]
        if not keys:
            own_keys = [k for k in (head + ".weight", head + ".bias") if k in own]
            if own_keys:
                state.update({k: own[k] for k in own_keys})
                fresh.append(f"kept a fresh classifier {head}: the file has none (a headless backbone)")
            continue
        if not any(k in own for k in keys):
            for k in keys:
                del state[k]
            notes.append(f"dropped the file's classifier {head} (the model has no head)")
        elif any(k in own and own[k].shape != state[k].shape for k in keys):
            shape = tuple(state[keys[0]].shape)
            for k in keys:
                if k in own:
                    state[k] = own[k]
                else:
                    del state[k]
            fresh.append(f"kept a fresh classifier {head}: the file's has shape {shape}, the model's another")
    notes.extend(fresh)
    return fresh


def _fill_batch_counters(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], notes: list[str]) -> None:
    """Take BatchNorm ``num_batches_tracked`` counters the file lacks from the model (timm checkpoints often
    omit them; they only matter with ``momentum=None``)."""
    counters = [k for k in own if k.rsplit(".", 1)[-1] == BATCH_COUNTER and k not in state]
    if counters:
        state.update({k: own[k] for k in counters})
        notes.append(f"took {len(counters)} BatchNorm {BATCH_COUNTER} counters the file lacks from the model")


def _mismatches(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if items:
            problems.append(f"{label} {_listed(items)}")
    return problems


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch appends paragraphs of advice)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0].split(". ")[0]
