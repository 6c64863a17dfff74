"""One encoder for every modality: any timm model by name, returning all stage maps, the embedding and logits."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec
from crossmodal.models.small_input import apply_small_input_stem
from crossmodal.models.weights import load_weights

# Side of the dummy input that measures the stage reductions after ``small_input`` changed the stem.
PROBE_SIZE = 64


class Encoder(nn.Module):
    """A timm model as a modality encoder: every stage's feature map, the pooled embedding, optional logits.

    Sizes come from timm's ``feature_info`` (see :attr:`spec`), so consumers never hard-code channels. The timm
    model itself is :attr:`model`; its ``state_dict`` has plain timm keys, so an exported
    ``encoder.model.state_dict()`` (saved as ``.safetensors``) loads into plain timm with
    ``timm.create_model(name, pretrained=True, in_chans=C, num_classes=K,
    pretrained_cfg_overlay=dict(file=path, num_classes=K, input_size=(C, H, W)))``. ``small_input`` changes no
    parameter shape: re-apply :func:`~crossmodal.models.small_input.apply_small_input_stem` to that model for
    small images.

    The logits are the classifier (``model.get_classifier()``) applied to the embedding itself, so that with
    ``drop_rate > 0`` in training both see the same dropout mask. On the first batch this is checked once, in
    eval mode, to equal timm's ``forward_head``; where it does not (a head that adds an auxiliary term, as volo's,
    a 1x1-conv classifier on the unflattened pooled map, as dla, dpn and resnetv2 have, or the two heads of a
    distilled model), the logits come from a second ``forward_head`` call, whose dropout mask is drawn anew.

    Args:
        name: a timm model name (``resnet18``, ``resnet10t``, ``test_resnet``, ``efficientnet_b0`` ...).
        in_chans: input channels of the modality (1 for depth, 3 for RGB ...).
        num_classes: classifier outputs; 0 builds no head and the output's ``logits`` are None.
        small_input: stride-1 stem without max-pool, for 32-96 px images (resnet18 on 32 x 32: 4 x 4 last map).
        weights: a local weight file (``.safetensors`` or a ``torch.save``-d state dict) loaded strictly, with
            a classifier of another size dropped (see :func:`~crossmodal.models.weights.load_weights`).
        adapt_input: adapt a first convolution of ``weights`` with another input-channel count to ``in_chans``
            (timm's ``adapt_input_conv``); without it such a file is an
            :class:`~crossmodal.models.weights.InputChannelsMismatch`. What was adapted is in
            :attr:`weight_notes`.
        input_norm: optional ``(mean, std)``, one value per channel, applied inside :meth:`forward` before the
            backbone (for weights that expect another normalisation than the data loader's).
        input_size: optional ``(height, width)`` every input is resized to inside :meth:`forward` (bilinear,
            antialiased when shrinking), after ``input_norm``: a pretrained network fed the resolution it was
            trained at whatever the data's. Stage maps are then sized by it, not by the data. Checked at
            construction by one forward at that size.
        **timm_kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ``img_size`` ...).

    Raises:
        ConfigError: an unknown timm name, a model without ``forward_intermediates``, or bad options.

    Examples:
        >>> encoder = Encoder("resnet18", in_chans=1, num_classes=10, small_input=True)
        >>> out = encoder(torch.randn(2, 1, 32, 32))
        >>> [f.shape[-1] for f in out.features], out.embedding.shape, out.logits.shape
        ([32, 32, 16, 8, 4], torch.Size([2, 512]), torch.Size([2, 10]))
    """

    def __init__(self, name: str, in_chans: int, num_classes: int = 0, small_input: bool = False,
                 weights: str | os.PathLike | None = None, adapt_input: bool = False,
                 input_norm: tuple[Sequence[float], Sequence[float]] | None = None,
                 input_size: Sequence[int] | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(name, str) or not timm.is_model(name):
            raise ConfigError(f"unknown timm model '{name}'")
        if timm_kwargs.pop("pretrained", False):
            raise ConfigError("pretrained=True would download weights; pass weights=<local file> instead")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ConfigError(f"in_chans must be a positive integer, got {in_chans!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        try:
            self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                                           **timm_kwargs)
        except TypeError as err:
            raise ConfigError(f"timm model '{name}': {err}") from None
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "feature_info"):
            raise ConfigError(f"timm model '{name}' has no forward_intermediates / feature_info; choose another")
        self.name = name
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.small_input = bool(small_input)
        self.timm_kwargs = dict(timm_kwargs)
        self.input_norm = _checked_norm(input_norm, in_chans)
        self.input_size = _checked_size(input_size)
        if self.input_norm is not None:
            mean, std = (torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1) for values in self.input_norm)
            self.register_buffer("norm_mean", mean, persistent=False)
            self.register_buffer("norm_std", std, persistent=False)
        if self.small_input:
            apply_small_input_stem(self.model)
        # what loading ``weights`` adapted (load_weights' notes), for the caller to report
        self.weight_notes: list[str] = []
        if weights is not None:
            self.weight_notes = load_weights(self.model, weights, adapt_input=adapt_input)
        self.spec = self._measure_spec()
        # Whether get_classifier() turns the embedding into forward_head's logits; checked on the first batch.
        self._classifier_is_head: Optional[bool] = None

    @property
    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this encoder (without weights): ``Encoder(**encoder.config)``."""
        norm = None if self.input_norm is None else [list(values) for values in self.input_norm]
        size = {} if self.input_size is None else {"input_size": list(self.input_size)}  # absent: old fingerprints hold
        return dict(name=self.name, in_chans=self.in_chans, num_classes=self.num_classes,
                    small_input=self.small_input, input_norm=norm, **size, **self.timm_kwargs)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that determines the outputs: :attr:`config` and every ``state_dict``
        tensor (name, shape, dtype, bytes). Caches of this encoder's outputs are keyed by it."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config, sort_keys=True, default=repr).encode())
        for name, tensor in self.state_dict().items():
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _measure_spec(self) -> FeatureSpec:
        """Sizes from ``feature_info``; after ``small_input`` the reductions are measured by one no-grad forward
        in eval mode (BatchNorm statistics untouched), since timm's ``feature_info`` describes the original
        stem."""
        info = self.model.feature_info
        channels = tuple(int(stage["num_chs"]) for stage in info)
        reductions = tuple(int(stage["reduction"]) for stage in info)
        if self.input_size is not None:
            self._check_input_size(channels)
        if self.small_input:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    probe = torch.zeros(1, self.in_chans, PROBE_SIZE, PROBE_SIZE)
                    maps = self.model.forward_intermediates(probe, intermediates_only=True)
            finally:
                self.model.train(was_training)
            self._check_stages(maps, channels)
            reductions = tuple(max(1, round(PROBE_SIZE / f.shape[-2])) for f in maps)
        embed_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        return FeatureSpec(channels, reductions, embed_dim, self.num_classes)

    def _check_input_size(self, channels: Sequence[int]) -> None:
        """One no-grad forward at ``input_size`` in eval mode: a size the model cannot take (a fixed-size patch
        embedding, a map shrunk to nothing) is a ConfigError here, not a failure in the middle of a run."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                maps = self.model.forward_intermediates(torch.zeros(1, self.in_chans, *self.input_size),
                                                        intermediates_only=True)
        except (RuntimeError, ValueError, AssertionError) as err:
            height, width = self.input_size
            raise ConfigError(f"input_size {height}x{width}: timm model '{self.name}' cannot take it "
                              f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
                              ) from None
        finally:
            self.model.train(was_training)
        self._check_stages(maps, channels)

    def _check_stages(self, maps: Sequence[torch.Tensor], channels: Sequence[int]) -> None:
        got = [int(f.shape[1]) for f in maps]
        if got != list(channels):
            raise ConfigError(f"timm model '{self.name}' returned stages with channels {got}, but its "
                              f"feature_info lists {list(channels)}")

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode a batch (B x in_chans x H x W): every stage map (NCHW), the embedding and the logits."""
        if self.input_norm is not None:
            x = (x - self.norm_mean) / self.norm_std
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrinks = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrinks)
        final, features = self.model.forward_intermediates(x, intermediates_only=False)
        self._check_stages(features, self.spec.channels)
        embedding = self.model.forward_head(final, pre_logits=True)
        return EncoderOutput(list(features), embedding, self._logits(final, embedding))

    def _logits(self, final: torch.Tensor, embedding: torch.Tensor) -> Optional[torch.Tensor]:
        """The classifier applied to ``embedding`` itself, so that both see one dropout mask; ``forward_head`` run
        again for the models where that is not what ``forward_head`` computes (see the class docstring)."""
        if self.num_classes == 0:
            return None
        if self._classifier_is_head is None:
            self._classifier_is_head = self._classifier_reproduces_head(final)
        if self._classifier_is_head:
            return self.model.get_classifier()(embedding)
        return self.model.forward_head(final)

    def _classifier_reproduces_head(self, final: torch.Tensor) -> bool:
        """Whether ``get_classifier()(forward_head(final, pre_logits=True))`` equals ``forward_head(final)``,
        compared without gradients in eval mode (no dropout, BatchNorm statistics untouched), every module's
        mode restored afterwards."""
        classifier = self.model.get_classifier()
        if not isinstance(classifier, nn.Module):  # distilled models: a (head, head_dist) pair
            return False
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                expected = self.model.forward_head(final)
                got = classifier(self.model.forward_head(final, pre_logits=True))
        except Exception:  # e.g. a 1x1-conv classifier (dla, dpn, resnetv2) refuses the flattened embedding
            return False
        finally:
            for module, mode in modes:
                module.training = mode
        return (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and got.shape == expected.shape
                and torch.allclose(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True))


def create_encoder(config: dict[str, Any]) -> Encoder:
    """An :class:`Encoder` from a config mapping (``name``, ``in_chans``, ... as keyword arguments).

    Raises:
        ConfigError: a missing ``name`` / ``in_chans``, or anything :class:`Encoder` refuses.
    """
    missing = [key for key in ("name", "in_chans") if key not in config]
    if missing:
        raise ConfigError(f"encoder config lacks {', '.join(missing)}")
    return Encoder(**config)


def _checked_size(input_size: Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    try:
        height, width = input_size
    except (TypeError, ValueError):
        raise ConfigError(f"input_size must be [height, width], got {input_size!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (height, width)):
        raise ConfigError(f"input_size must be two positive integers [height, width], got {input_size!r}")
    return int(height), int(width)


def _checked_norm(input_norm: tuple[Sequence[float], Sequence[float]] | None,
                  in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if input_norm is None:
        return None
    try:
        mean, std = (tuple(float(v) for v in values) for values in input_norm)
    except (TypeError, ValueError):
        raise ConfigError(f"input_norm must be (mean, std) sequences of numbers, got {input_norm!r}") from None
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(f"input_norm needs {in_chans} means and stds (one per channel), "
                          f"got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"input_norm std values must be positive, got {std}")
    return mean, std
