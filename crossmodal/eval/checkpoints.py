"""Load the encoder to evaluate: from a run folder, an exported ``.safetensors`` file, or freshly initialised."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from crossmodal.errors import DataError
from crossmodal.models.encoder import Encoder
from crossmodal.models.weights import InputChannelsMismatch, check_recorded_config, load_weights, read_metadata, \
    stored_config
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

    The weights are evaluated as they are: nothing is adapted, and a run's weight file that records another
    encoder than its model card (input channels, architecture, stem, classes ...) or whose tensors do not fit
    that encoder exactly is refused.

    With ``random_init`` the same architecture is built with fresh weights (seeded by ``seed``) and nothing is
    loaded: the scratch baseline.

    Raises:
        DataError: a missing path, a folder that is not a finished run, a file without crossmodal metadata, or
            weights that do not match their model card or metadata.
    """
    path = os.path.abspath(os.fspath(checkpoint))
    card = None
    if os.path.isdir(path):
        card = run_folder.read_model_card(path)
        weights, config, modality = run_folder.card_weights(path, card), dict(card["encoder"]), card["modality"]
        against = "the run's model card"
    elif os.path.isfile(path):
        weights, config, modality = path, _config_from_metadata(path), None
        against = "its metadata"
    else:
        raise DataError(path, "no such run folder or weight file (--checkpoint)")
    torch.manual_seed(seed)
    encoder = Encoder(**config)
    if not random_init:
        _load_exactly(encoder, weights, config, modality, against)
    return LoadedEncoder(encoder.eval(), modality, path, None if random_init else weights, card)


def _load_exactly(encoder: Encoder, weights: str, config: Mapping[str, Any], modality: Optional[str],
                  against: str) -> None:
    """Load ``weights`` into ``encoder`` as they are, after checking the encoder config the file records."""
    check_recorded_config(weights, config, against, expected_modality=modality)
    try:
        load_weights(encoder.model, weights, exact=True)
    except InputChannelsMismatch as err:
        said = f" ({modality})" if modality else ""
        raise DataError(weights, f"its encoder has {err.file_chans} input channel{'' if err.file_chans == 1 else 's'}"
                                 f", {against} says {err.model_chans}{said}") from None


def _config_from_metadata(path: str) -> dict[str, Any]:
    config = stored_config(path, read_metadata(path, any_name=True))
    if config is None:
        raise DataError(path, "no crossmodal metadata (timm_name, in_chans); give a run folder or a file exported "
                              "by crossmodal train-teacher / distill")
    return dict(config)


def method_name(card: Optional[Mapping[str, Any]], random_init: bool) -> str:
    """How reports name an evaluated encoder: ``scratch`` (a random initialisation), ``supervised`` (a
    train-teacher run), ``pretrained`` (an imported teacher), the distillers joined by ``+`` with ``ce`` when the
    student also had cross-entropy (a distill run), or ``unknown`` (a bare weights file).

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
    if card.get("verb") == "import-teacher":
        return "pretrained"
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
