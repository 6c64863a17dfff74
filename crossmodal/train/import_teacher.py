"""``crossmodal import-teacher``: a pretrained network from another code base as a teacher folder of our own.

The folder is what ``train-teacher`` leaves (``teacher.safetensors`` under timm's names, ``model_card.json``), so
``distill``, ``probe`` and the studies take it as they take a trained run. Its card says where the weights came
from (package, version, file, SHA-256), their licence, the modality the teacher reads, the input the network
expects (pixels in [0, 1], mean and std, size), the source's stated accuracy (marked as stated), and how the
imported timm model's logits compare with the source package's own model on the same inputs.

For a modality other than RGB (``lab_l``: luminance) the first convolution is summed over its input channels, as
timm's ``adapt_input_conv`` does: a grey image through the summed convolution is the same grey replicated to
three channels through the original, when the network's normalisation is equal across channels.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from crossmodal import __version__, run_folder
from crossmodal.config import flatten
from crossmodal.data.modalities import MODALITIES
from crossmodal.engine.events import write_summary
from crossmodal.errors import ConfigError, DataError
from crossmodal.files import current_umask, place_error
from crossmodal.models.encoder import Encoder
from crossmodal.models.pretrained import (LITE_STATED_BY, LITE_STATED_TOP1, classifier_size, default_input,
                                          file_digest, get_source, owning_distribution, pretrained_cfg,
                                          reference_logits, renormalisation)
from crossmodal.models.weights import load_state, read_state_dict
from crossmodal.train.export import export_encoder, load_snippet

WEIGHTS = run_folder.WEIGHTS["train-teacher"]
# The logit check's inputs: N(0, 1) noise at the native size, seeded. A wrong key mapping or normalisation-free
# mix-up moves logits by whole units; float32 reordering between two implementations of the same operations moves
# them by about u * sqrt(depth) * |logit| (1e-6 relative); the check fails above 1e-3 relative to the largest logit.
CHECK_BATCH, CHECK_SEED, CHECK_RELATIVE = 4, 0, 1e-3
LICENCES = {"efficientnet-lite": "Apache-2.0"}


@dataclass
class Imported:
    """What :func:`import_teacher` wrote and measured."""
    folder: str
    card: dict[str, Any]
    difference: Optional[float]  # largest absolute logit difference against the source's model (None: not run)
    line: str                    # the one line saying it


def import_teacher(source_name: str, out: str, weights: Optional[str] = None, architecture: Optional[str] = None,
                   modality: str = "rgb", input_size: Optional[Sequence[int]] = None,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   licence: Optional[str] = None, stated_top1: Optional[float] = None) -> Imported:
    """Turn a pretrained weight file into a teacher folder ``out`` (written whole or not at all).

    Args:
        source_name: ``efficientnet-lite``, ``torchvision`` or ``timm`` (:data:`~crossmodal.models.pretrained.SOURCES`).
        out: the teacher folder to create (absent or empty).
        weights: the weight file (default: the installed package's, for sources that ship one).
        architecture: the timm name (default: the source's).
        modality: the modality the teacher reads: one with pixel statistics (rgb, lab_l).
        input_size, mean, std: the input the network expects (default: timm's pretrained_cfg).
        licence: the weights' licence (default: the source's, where known).
        stated_top1: an accuracy the source states, recorded as stated.

    Raises:
        ConfigError: an unknown source, architecture or modality, or bad input settings.
        DataError: an unreadable weight file, tensors that do not fit the architecture (named), an ``out`` in use,
            or an imported model that does not reproduce the source's.
    """
    source = get_source(source_name)
    architecture = architecture or source.default_architecture
    if architecture is None:
        raise ConfigError(f"source {source.name} needs --arch (a timm model name)")
    import timm

    if not timm.is_model(architecture):
        raise ConfigError(f"--arch: unknown timm model '{architecture}'")
    if source.architectures:
        source.architectures(architecture)
    target_modality = MODALITIES.get(modality)
    if target_modality is None or target_modality.pixels is None:
        images = [name for name, m in MODALITIES.items() if m.pixels is not None]
        raise ConfigError(f"--modality {modality}: an image network reads image modalities with pixel statistics "
                          f"({', '.join(images)})")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise DataError(out, "already exists; give another --out")
    size, expects = _expected_input(architecture, input_size, mean, std)
    if weights is None and source.default_file is None:
        raise ConfigError(f"source {source.name} needs --weights (a local weight file; nothing is downloaded)")
    path = os.path.abspath(weights if weights is not None else source.default_file(architecture))
    state = read_state_dict(path)

    mapped = source.map_keys(state, timm.create_model(architecture, pretrained=False))
    classes = classifier_size(mapped, architecture)
    file_chans = _file_channels(mapped, architecture, path)
    if len(expects[0]) != file_chans:
        raise ConfigError(f"--mean/--std give {len(expects[0])} values, the network takes {file_chans} channels")
    native = Encoder(architecture, in_chans=file_chans, num_classes=classes, input_size=size)  # checks the size
    load_state(native.model, mapped, path, exact=True)
    difference, line = _compare(source, architecture, state, native, size, file_chans, path)

    channels = target_modality.channels
    teacher = Encoder(architecture, in_chans=channels, num_classes=classes,
                      input_norm=renormalisation(expects, target_modality.pixels, channels), input_size=size)
    notes = load_state(teacher.model, mapped, path, adapt_input=True)
    card = _card(source, architecture, path, modality, teacher, size, expects, notes, licence, stated_top1,
                 line, difference)
    _write_folder(out, teacher, modality, card)
    return Imported(out, card, difference, line)


def _expected_input(architecture: str, input_size: Optional[Sequence[int]], mean: Optional[Sequence[float]],
                    std: Optional[Sequence[float]]) -> tuple[tuple[int, int], tuple[tuple[float, ...], ...]]:
    size, (default_mean, default_std) = default_input(architecture)
    if (mean is None) != (std is None):
        raise ConfigError("give --mean and --std together")
    if input_size is not None:
        if len(input_size) != 2 or any(int(v) < 1 for v in input_size):
            raise ConfigError(f"--input-size needs two positive integers, got {list(input_size)}")
        size = (int(input_size[0]), int(input_size[1]))
    if mean is not None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError("--mean and --std need as many values each, and positive stds")
        default_mean, default_std = tuple(map(float, mean)), tuple(map(float, std))
    return size, (default_mean, default_std)


def _file_channels(state: dict[str, torch.Tensor], architecture: str, path: str) -> int:
    first = pretrained_cfg(architecture).get("first_conv") or ()
    for name in (first,) if isinstance(first, str) else first:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim == 4:
            return int(weight.shape[1])
    raise DataError(path, f"holds no first convolution of {architecture} (its keys are not {architecture}'s)")


def _compare(source, architecture: str, state: dict[str, torch.Tensor], native: Encoder, size: tuple[int, int],
             channels: int, path: str) -> tuple[Optional[float], str]:
    """The imported model's logits against the source package's own model on seeded noise at the native size."""
    if native.num_classes == 0:
        return None, f"logits not compared: {architecture} has no classifier in this file"
    generator = torch.Generator().manual_seed(CHECK_SEED)
    inputs = torch.randn(CHECK_BATCH, channels, *size, generator=generator)
    try:
        expected = reference_logits(source, architecture, state, inputs)
    except (RuntimeError, KeyError) as err:
        raise DataError(path, f"the source's own model does not take this file ({err})") from None
    if expected is None:
        return None, f"logits not compared: {source.reference_name} is not installed"
    native.eval()
    with torch.no_grad():
        got = native(inputs).logits
    difference = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    line = (f"logits of the imported {architecture} against {source.reference_name}: largest absolute difference "
            f"{difference:.3g} (largest logit {scale:.3g}) on {CHECK_BATCH} seeded N(0, 1) inputs of "
            f"{size[0]}x{size[1]}")
    if not difference <= CHECK_RELATIVE * max(scale, 1.0):
        raise DataError(path, f"the imported model does not reproduce {source.reference_name}: {line}")
    return difference, line


def _card(source, architecture: str, path: str, modality: str, teacher: Encoder, size: tuple[int, int],
          expects, notes: list[str], licence: Optional[str], stated_top1: Optional[float], line: str,
          difference: Optional[float]) -> dict[str, Any]:
    owner = owning_distribution(path)
    stated = None
    if stated_top1 is not None:
        stated = {"imagenet_top1": float(stated_top1), "stated_by": "the user (--stated-top1), not measured here"}
    elif source.name == "efficientnet-lite":
        level = int(architecture[-1])
        stated = {"imagenet_top1": LITE_STATED_TOP1[level], "stated_by": LITE_STATED_BY}
    return {
        "format": run_folder.MODEL_CARD_FORMAT,
        "verb": "import-teacher",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "crossmodal_version": __version__,
        "weights": WEIGHTS,
        "modality": modality,
        "encoder": teacher.config,
        "source": {"kind": source.name, "architecture": architecture, "file": path, "sha256": file_digest(path),
                   "package": owner[0] if owner else None, "version": owner[1] if owner else None},
        "licence": licence or LICENCES.get(source.name, "not stated (give --licence)"),
        "input": {"pixels": "[0, 1]", "size": list(size), "mean": list(expects[0]), "std": list(expects[1])},
        "stated_accuracy": stated,
        "adapted": notes,
        "logit_check": {"line": line, "largest_absolute_difference": difference},
        "load_with_timm": load_snippet(teacher, WEIGHTS),
    }


def _card_events(folder: str, card: dict[str, Any]) -> None:
    """The folder in TensorBoard beside the trained runs: the card's source, encoder and input as hyper-parameters,
    and its measured or stated numbers (the logit check, the stated ImageNet top-1, a fitted head's C and
    accuracies) as scalars at step 0."""
    hparams = flatten({key: card[key] for key in ("verb", "modality", "encoder", "source", "input", "licence")
                       if card.get(key) is not None})
    numbers = flatten({key: card[key] for key in ("logit_check", "stated_accuracy", "head") if card.get(key)})
    write_summary(folder, hparams, numbers, print)


def _write_folder(out: str, teacher: Encoder, modality: str, card: dict[str, Any]) -> None:
    """The weights and the card in a temporary folder beside ``out``, renamed to it when both are written."""
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    except OSError as err:
        raise DataError(out, f"cannot create the teacher folder: {err.strerror or err}") from None
    try:
        os.chmod(temporary, 0o777 & ~current_umask())
        export_encoder(teacher, os.path.join(temporary, WEIGHTS), modality)
        with open(run_folder.model_card_path(temporary), "w", encoding="utf-8") as handle:
            json.dump(card, handle, indent=2)
        _card_events(temporary, card)
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.rename(temporary, out)
    except BaseException as err:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(err, DataError) and err.problem.startswith("cannot write it: "):
            raise DataError(out, err.problem) from None  # the folder asked for, not the temporary one
        reason = place_error(err, parent) if isinstance(err, Exception) else None
        if reason is not None:
            raise DataError(out, f"cannot write it: {reason}") from None
        raise


def initialised_folder(out: str, weights: str, modality: str) -> str:
    """A run folder (``teacher.safetensors`` and a card of verb ``initialise``) holding the architecture a weight
    file exported by crossmodal records, its first convolution adapted to ``modality`` (timm's
    ``adapt_input_conv``) and no classifier or input renormalisation: the weights as a starting point for another
    modality, evaluated without training (a study's ImageNet-initialisation row).

    Raises:
        DataError: a file without crossmodal metadata, or an unknown modality.
    """
    from crossmodal.models.weights import stored_config

    recorded = stored_config(weights)
    if recorded is None:
        raise DataError(weights, "no crossmodal metadata (an import-teacher or train-teacher file is needed)")
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality '{modality}'")
    encoder = Encoder(recorded["name"], in_chans=MODALITIES[modality].channels, num_classes=0,
                      weights=weights, adapt_input=True)
    card = {"format": run_folder.MODEL_CARD_FORMAT, "verb": "initialise",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "crossmodal_version": __version__, "weights": WEIGHTS, "modality": modality, "encoder": encoder.config,
            "source": {"file": os.path.abspath(weights), "sha256": file_digest(weights)},
            "adapted": encoder.weight_notes, "load_with_timm": load_snippet(encoder, WEIGHTS)}
    _write_folder(os.path.abspath(out), encoder, modality, card)
    return out


def headed_folder(out: str, teacher: str, weight: torch.Tensor, bias: torch.Tensor, classes: Sequence[str],
                  record: dict[str, Any]) -> str:
    """A copy of the teacher folder ``teacher`` whose classifier is replaced by a head over ``classes``
    (``logits = embedding @ weight.T + bias``, e.g. :func:`~crossmodal.eval.teacher_head.fit_head`'s), everything
    else unchanged: the frozen teacher of supervised cross-modal distillation, whose logits cover the student's
    classes. The card keeps the source's record and adds ``head`` (``record``, the classes).

    Raises:
        DataError: ``teacher`` is not a finished run folder, or the head does not fit its embedding.
    """
    card = run_folder.read_model_card(teacher)
    weights = run_folder.card_weights(teacher, card)
    encoder = Encoder(**{**card["encoder"], "num_classes": len(classes)})
    if tuple(weight.shape) != (len(classes), encoder.spec.embed_dim) or tuple(bias.shape) != (len(classes),):
        raise DataError(teacher, f"a head of shape {tuple(weight.shape)} does not fit its {encoder.spec.embed_dim}-d "
                                 f"embedding and {len(classes)} classes")
    classifier = encoder.model.get_classifier()
    prefix = next(name for name, module in encoder.model.named_modules() if module is classifier)
    state = {key: value for key, value in read_state_dict(weights).items() if not key.startswith(f"{prefix}.")}
    state[f"{prefix}.weight"] = weight.reshape(classifier.weight.shape).to(classifier.weight.dtype)
    state[f"{prefix}.bias"] = bias.to(classifier.bias.dtype)
    encoder.model.load_state_dict(state)  # strict: every other tensor is the teacher's own
    headed = {**card, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "crossmodal_version": __version__, "encoder": encoder.config,
              "head": {**record, "classes": list(classes)},
              "adapted": list(card.get("adapted") or []) + [f"classifier replaced by a linear head over {len(classes)} "
                                                            f"classes fitted on the frozen embedding"],
              "load_with_timm": load_snippet(encoder, WEIGHTS)}
    headed.pop("logit_check", None)  # it checked the source's classifier, which is gone
    _write_folder(os.path.abspath(out), encoder, card["modality"], headed)
    return out
