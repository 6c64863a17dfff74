"""The run folder: the one module that knows its file names and how each file is read and written.

A run folder of ``crossmodal train-teacher`` or ``crossmodal distill`` (and each protocol folder of
``crossmodal segment``) holds::

    config.yaml              CONFIG         the resolved config; it marks the folder as a run
    checkpoint.pt            CHECKPOINT     everything needed to continue (crossmodal.engine.checkpoint)
    metrics.jsonl            METRICS_JSONL  one record per logged step and epoch, appended as training goes
    metrics_steps.csv        STEPS_CSV      the same as tables, and the curves, written at the end
    metrics_epochs.csv       EPOCHS_CSV
    curves.png               CURVES
    tb/                      TENSORBOARD    TensorBoard events of the same records, the config and the pictures
    teacher_cache.h5         TEACHER_CACHE  the frozen teacher's outputs (distill, unaugmented teacher view)
    teacher.safetensors      WEIGHTS[verb]  the trained encoder, loadable by plain timm
    student.safetensors
    model_card.json          MODEL_CARD     written last: its presence means the run finished

Result files: ``segment.json`` (SEGMENT_JSON) in a segment output folder; a probe's JSON goes where the user
says (``--json``).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping

import torch

from crossmodal import runtime
from crossmodal.errors import ConfigError, DataError
from crossmodal.files import atomic_output, exclusive_lock, os_reason

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
METRICS_JSONL = "metrics.jsonl"
STEPS_CSV = "metrics_steps.csv"
EPOCHS_CSV = "metrics_epochs.csv"
CURVES = "curves.png"
TENSORBOARD = "tb"
MODEL_CARD = "model_card.json"
TEACHER_CACHE = "teacher_cache.h5"
WEIGHTS = {"train-teacher": "teacher.safetensors", "distill": "student.safetensors"}
SEGMENT_JSON = "segment.json"
RUNS_ROOT = "runs"
MODEL_CARD_FORMAT = "crossmodal-model-card/1"


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG)


def checkpoint_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT)


def model_card_path(run_dir: str) -> str:
    return os.path.join(run_dir, MODEL_CARD)


def is_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run (its config was written)."""
    return os.path.isfile(config_path(run_dir))


def has_checkpoint(run_dir: str) -> bool:
    return os.path.exists(checkpoint_path(run_dir))


def is_finished(run_dir: str) -> bool:
    """Whether the run finished (its model card is written last)."""
    return os.path.exists(model_card_path(run_dir))


def default_run_dir(verb: str, config_file: str) -> str:
    """``runs/VERB-CONFIG-YYYYmmdd-HHMMSS`` (absolute)."""
    stem = os.path.splitext(os.path.basename(config_file))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(RUNS_ROOT, f"{verb}-{stem}-{stamp}"))


def create(run_dir: str, claim: bool = False) -> tuple[str, bool]:
    """Create the run folder on rank 0; (the folder, whether this call created it), the same on every rank.

    With ``claim`` (a default name) the folder is claimed atomically: runs of one config started in the same
    second (a sweep) get ``NAME-2``, ``NAME-3`` ... instead of training into one folder together.
    """
    try:
        return _create(run_dir, claim)
    except OSError as err:
        raise DataError(run_dir, f"cannot create the run folder: {os_reason(err)}") from None


def _create(run_dir: str, claim: bool) -> tuple[str, bool]:
    created = False
    if runtime.rank() == 0 and claim:
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        base, number = run_dir, 1
        while True:
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                number += 1
                run_dir = f"{base}-{number}"
        created = True
    elif runtime.rank() == 0 and not os.path.isdir(run_dir):
        os.makedirs(run_dir)
        created = True
    if claim:
        run_dir = runtime.broadcast_object(run_dir)
    return run_dir, created


def lock(run_dir: str, verb: str):
    """An exclusive lock on the run folder while a process writes it (rank 0; the others share its run), so
    that a second ``--resume`` of the same run is refused in one line instead of interleaving with the first."""
    from contextlib import nullcontext

    if runtime.rank() != 0:
        return nullcontext()
    return exclusive_lock(os.path.join(run_dir, ".lock"), run_dir, f"crossmodal {verb}")


def write_config(run_dir: str, text: str) -> None:
    """``RUN_DIR/config.yaml`` (YAML text), on rank 0, atomically: it marks the folder a run."""
    if runtime.rank() == 0:
        write_text(config_path(run_dir), text)


def require_run(run_dir: str) -> str:
    """The path of ``run_dir``'s config; a folder without one is a one-line error."""
    path = config_path(run_dir)
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir}: not a run folder (it has no {CONFIG})")
    return path


def write_model_card(run_dir: str, card: Mapping[str, Any]) -> None:
    """``RUN_DIR/model_card.json``, atomically (tensors and numpy scalars become plain numbers)."""
    write_text(model_card_path(run_dir), json.dumps(card, indent=2, default=_jsonable) + "\n")


def read_model_card(run_dir: str) -> dict[str, Any]:
    """A finished run's model card, checked to name its weights, encoder and modality.

    Raises:
        DataError: the folder has no readable model card (not a run, or not finished), or ``RUN/model_card.json:
            not valid JSON (line L column C: ...)`` for a damaged or hand-edited one.
    """
    path = model_card_path(run_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            card = json.load(handle)
    except json.JSONDecodeError as err:  # it is a finished run, whose card was damaged or edited by hand
        raise DataError(path, f"not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except (OSError, ValueError):
        raise DataError(run_dir, f"not a finished run folder (no readable {MODEL_CARD})") from None
    try:
        if not isinstance(card, dict) or not isinstance(card["encoder"], dict):
            raise TypeError
        card["weights"], card["modality"]  # noqa: B018  (required keys)
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(run_dir, f"not a finished run folder (no readable {MODEL_CARD})") from None
    return card


def card_weights(run_dir: str, card: Mapping[str, Any]) -> str:
    """The path of the weight file a model card names."""
    return os.path.join(run_dir, card["weights"])


def weights_file(path: str, key: str) -> str:
    """``path``, or, when it is a finished run folder, the weight file its model card names: every
    ``*.weights`` setting takes a run folder as ``teacher.weights`` does (``key`` names the setting).

    Raises:
        DataError: ``PATH: KEY is a folder but not a finished run folder ...``.
    """
    if not os.path.isdir(path):
        return path
    try:
        card = read_model_card(path)
    except DataError as err:
        if err.path != path:  # it names the file inside the folder (a card that is not valid JSON)
            raise
        raise DataError(path, f"{key} is a folder but {err.problem}") from None
    return card_weights(path, card)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
