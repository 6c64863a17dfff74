"""A frozen teacher: an encoder that never trains, whatever mode its parent is put in."""
from __future__ import annotations

import torch
from torch import nn

from crossmodal.models.encoder import Encoder
from crossmodal.models.outputs import EncoderOutput, FeatureSpec


class FrozenTeacher(nn.Module):
    """Wraps an :class:`Encoder` so that it stays fixed during distillation.

    Its parameters do not require gradients, it is always in eval mode (``parent.train()`` leaves it in eval,
    so BatchNorm running statistics and dropout never change; an encoder put in train mode directly, bypassing
    the wrapper, is put back in eval by :meth:`forward`), and its forward runs under ``torch.no_grad()``.
    The encoder's input normalisation (``input_norm``) applies as usual.

    Args:
        encoder: the teacher encoder, usually built with ``weights=`` a trained file.

    Examples:
        >>> teacher = FrozenTeacher(Encoder("resnet18", in_chans=3, weights="rgb_teacher.safetensors"))
        >>> student.train(); teacher.train()  # still eval
        >>> teacher(rgb).embedding.requires_grad
        False
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.train(False)

    @property
    def spec(self) -> FeatureSpec:
        return self.encoder.spec

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Always eval mode, whatever ``mode`` says."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """The encoder's outputs without gradients, in eval mode: a module of the encoder put in train mode
        directly (``teacher.encoder.train()``) is put back in eval first."""
        if any(module.training for module in self.encoder.modules()):
            self.encoder.eval()
        with torch.no_grad():
            return self.encoder(x)

    def fingerprint(self) -> str:
        """The encoder's :meth:`~crossmodal.models.encoder.Encoder.fingerprint`: its config and every tensor."""
        return self.encoder.fingerprint()
