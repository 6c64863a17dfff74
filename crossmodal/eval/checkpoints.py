"""Load the encoder to evaluate: from a run folder, an exported ``.safetensors`` file, or freshly initialised."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from safetensors import safe_open

from crossmodal.errors import DataError
from crossmodal.models.encoder import Encoder
from crossmodal import run_folder


@dataclass
class LoadedEncoder:
    """An encoder to evaluate and what is known about it.

    Attributes:
        encoder: the network (in eval mode).
        modality: the modality it was trained on, or None when the file does not say (a bare weights file).
        source: the checkpoint path, for reports.
        weights: the weight file it was loaded from, or None for ``random_init``.
        card: the run's model card, when there is one.
    """

    encoder: Encoder
    modality: Optional[str]
    source: str
    weights: Optional[str]
    card: Optional[dict[str, Any]]


def load_encoder(checkpoint: str | os.PathLike, random_init: bool = False, seed: int = 0) -> LoadedEncoder:
    """The encoder of ``checkpoint``: a run folder (``model_card.json`` names its weights and encoder config)
    or a ``.safetensors`` file exported by crossmodal (its metadata holds the encoder config).

    With ``random_init`` the same architecture is built with fresh weights (seeded by ``seed``) and nothing is
    loaded: the scratch baseline.

    Raises:
        DataError: a missing path, a folder that is not a finished run, or a file without crossmodal metadata.
    """
    path = os.path.abspath(os.fspath(checkpoint))
    card = None
    if os.path.isdir(path):
        card = run_folder.read_model_card(path)
        weights, config, modality = run_folder.card_weights(path, card), dict(card["encoder"]), card["modality"]
    elif os.path.isfile(path):
        weights, config, modality = path, _config_from_metadata(path), None
    else:
        raise DataError(path, "no such run folder or weight file (--checkpoint)")
    torch.manual_seed(seed)
    encoder = Encoder(**config, weights=None if random_init else weights)
    return LoadedEncoder(encoder.eval(), modality, path, None if random_init else weights, card)


def _config_from_metadata(path: str) -> dict[str, Any]:
    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a file that is not one
        raise DataError(path, f"not a .safetensors file ({' '.join(str(err).split())[:120]})") from None
    if "encoder" in metadata:
        try:
            return dict(json.loads(metadata["encoder"]))
        except (ValueError, TypeError):
            raise DataError(path, "its 'encoder' metadata is not valid JSON") from None
    if "timm_name" in metadata and "in_chans" in metadata:  # written before the full config was recorded
        return {"name": metadata["timm_name"], "in_chans": int(metadata["in_chans"]),
                "num_classes": int(metadata.get("num_classes", 0)),
                "small_input": metadata.get("small_input") == "true"}
    raise DataError(path, "no crossmodal metadata (timm_name, in_chans); give a run folder or a file exported by "
                          "crossmodal train-teacher / distill")


def method_name(card: Optional[Mapping[str, Any]], random_init: bool) -> str:
    """How reports name an evaluated encoder: ``scratch`` (a random initialisation), ``supervised`` (a
    train-teacher run), the distillers joined by ``+`` with ``ce`` when the student also had cross-entropy (a
    distill run), or ``unknown`` (a bare weights file).

    Examples:
        >>> method_name({"verb": "distill", "distillers": {"crd": {}, "kd": {}}, "loss": {"ce": 1.0}}, False)
        'crd+kd+ce'
    """
    if random_init:
        return "scratch"
    if not card:
        return "unknown"
    if card.get("verb") == "train-teacher":
        return "supervised"
    names = list(card.get("distillers") or {})
    if float((card.get("loss") or {}).get("ce") or 0) > 0:
        names.append("ce")
    return "+".join(names) or str(card.get("verb", "unknown"))


def recorded_seed(card: Optional[Mapping[str, Any]], random_init: bool, seed: int) -> int:
    """The seed that tells runs of one method apart in reports: the training run's seed, or ``seed`` for a
    random initialisation (which it seeds) and for a bare weights file."""
    if card and not random_init:
        return int((card.get("config") or {}).get("seed", seed))
    return seed
