"""The end products of a run: the encoder as a plain-timm ``.safetensors`` file and a JSON model card."""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping, Sized

from safetensors.torch import save_file

from crossmodal import __version__, run_folder, runtime
from crossmodal.config import RunConfig
from crossmodal.files import atomic_output, readable_like_other_outputs
from crossmodal.models.encoder import Encoder
from crossmodal.models.weights import CRC_KEY, tensor_crc32s


def export_encoder(encoder: Encoder, path: str | os.PathLike, modality: str | None = None) -> None:
    """Save ``encoder.model``'s state (plain timm keys, contiguous CPU tensors) as safetensors, atomically.

    The metadata records the timm name, input channels, the full encoder config and, when given, the modality
    (so that a file loaded as another encoder is refused in words), and a CRC-32 per tensor, checked when the
    file is read (safetensors has no checksum: a zeroed disk block would load as zero weights). Load it with
    ``timm.create_model(name, pretrained=True, in_chans=C, num_classes=K,
    pretrained_cfg_overlay=dict(file=path, num_classes=K))``, or with ``Encoder(..., weights=path)``.
    """
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in encoder.model.state_dict().items()}
    metadata = {"timm_name": encoder.name, "in_chans": str(encoder.in_chans),
                "num_classes": str(encoder.num_classes), "small_input": str(encoder.small_input).lower(),
                "encoder": json.dumps(encoder.config, sort_keys=True),  # rebuilds it: Encoder(**config)
                CRC_KEY: tensor_crc32s(state)}
    if modality is not None:
        metadata["modality"] = modality
    with atomic_output(path, suffix=".safetensors") as temporary:
        save_file(state, temporary, metadata=metadata)
        readable_like_other_outputs(temporary)


def finish_run(run_dir: str, verb: str, config: RunConfig, encoder: Encoder, modality: str, train: Sized,
               record: Mapping[str, Any], **extra: Any) -> None:
    """Export the trained encoder and write the model card, last: its presence marks the run finished."""
    weights_name = run_folder.WEIGHTS[verb]
    export_encoder(encoder, os.path.join(run_dir, weights_name), modality)
    run_folder.write_model_card(run_dir, model_card(verb, config, encoder, weights_name, modality, train, record,
                                                    **extra))
    print(f"{'teacher' if verb == 'train-teacher' else 'student'} written to {os.path.join(run_dir, weights_name)}")


def model_card(verb: str, config: RunConfig, encoder: Encoder, weights_name: str, modality: str, train: Sized,
               record: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The run's model card: what was trained, on what, how to load it, and the final metrics."""
    data = config.data
    return {
        "format": run_folder.MODEL_CARD_FORMAT,
        "verb": verb,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "crossmodal_version": __version__,
        "weights": weights_name,
        "modality": modality,
        "encoder": encoder.config,
        "data": {"path": data.path, "split": data.split, "num_samples": len(train), "eval_split": data.eval_split,
                 "size": data.size, "augment": data.augment},
        **extra,
        "processes": runtime.world_size(),
        "final_metrics": {k: v for k, v in record.items() if k != "scope"},
        "load_with_timm": load_snippet(encoder, weights_name),
        "config": config.to_tree(),
    }


def load_snippet(encoder: Encoder, weights_name: str) -> str:
    """Python that loads the exported file with plain timm (for the model card and the log).

    The encoder's timm options (``drop_rate``, ``img_size`` ...) are passed on, as some change the architecture;
    an ``input_norm`` the encoder applied inside its forward is spelled out as ``mean`` / ``std`` to apply to
    the input, since a plain timm model does not.
    """
    options = "".join(f", {key}={value!r}" for key, value in encoder.timm_kwargs.items())
    lines = ["import timm",
             f"model = timm.create_model({encoder.name!r}, pretrained=True, in_chans={encoder.in_chans}, "
             f"num_classes={encoder.num_classes}{options}, pretrained_cfg_overlay=dict(file={weights_name!r}, "
             f"num_classes={encoder.num_classes}))"]
    if encoder.small_input:
        lines += ["from crossmodal.models import apply_small_input_stem",
                  "apply_small_input_stem(model)  # this encoder was trained with the small-input stem"]
    if encoder.input_norm is not None:
        mean, std = ([float(v) for v in values] for values in encoder.input_norm)
        lines += ["import torch",
                  "# this encoder normalised its input itself: feed model((x - mean) / std)",
                  f"mean = torch.tensor({mean}).view(1, -1, 1, 1)",
                  f"std = torch.tensor({std}).view(1, -1, 1, 1)"]
    return "\n".join(lines)
