"""Encoders initialised from a weight file (``model.weights``, ``teacher.weights``, ``student.weights``), or
from the one a finished run folder's model card names.

A file whose first convolution takes another number of input channels than the modality (ImageNet RGB weights
for a depth encoder) is adapted only when the section's ``adapt_input`` says so, and the adaptation is said on
stderr; otherwise it is one error line naming the setting. A file exported by crossmodal that records another
architecture, stem or input normalisation than the encoder it is to initialise is refused where the weights
are used as they are (the frozen teacher).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Optional

from crossmodal import run_folder, runtime
from crossmodal.errors import DataError
from crossmodal.models.encoder import Encoder, create_encoder
from crossmodal.models.weights import InputChannelsMismatch, input_adaptations, read_metadata


def initialised_encoder(config: Mapping[str, Any], weights: Optional[str], adapt_input: bool, section: str,
                        modality: str) -> Encoder:
    """``create_encoder(config)`` with ``weights`` loaded; ``adapt_input`` allows a first convolution of another
    input-channel count to be adapted, which rank 0 then reports on stderr in one line.

    Args:
        config: the completed encoder config (:func:`~crossmodal.models.config.encoder_config`).
        weights: the weight file or a finished run folder, or None for a random initialisation.
        adapt_input: the section's ``adapt_input`` setting.
        section: the config section (``model``, ``teacher``, ``student``), for the messages.
        modality: the section's modality.

    Raises:
        DataError: the file's input channels differ and ``SECTION.adapt_input`` is false (the message names the
            setting), or the file does not match otherwise.
    """
    if weights is not None:
        weights = run_folder.weights_file(weights, f"{section}.weights")
    try:
        encoder = create_encoder({**config, "weights": weights, "adapt_input": adapt_input})
    except InputChannelsMismatch as err:
        stored = read_metadata(err.path).get("modality")
        raise DataError(err.path, f"{section}.weights has {err.file_chans} input channel"
                                  f"{'' if err.file_chans == 1 else 's'}{f' ({stored})' if stored else ''}, "
                                  f"{section}.modality {modality} has {err.model_chans}; set "
                                  f"{section}.adapt_input=true to initialise from it with its first convolution "
                                  f"({err.key}) adapted") from None
    adapted = input_adaptations(encoder.weight_notes)
    if adapted and runtime.rank() == 0:
        print(f"{section}.adapt_input: {os.fspath(weights)}: {'; '.join(adapted)}", file=sys.stderr, flush=True)
    return encoder
