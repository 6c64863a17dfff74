"""What an encoder describes about itself and what it returns: the currency between models and distillers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes of an encoder's outputs, from timm's ``feature_info`` (never hard-coded by consumers).

    Args:
        channels: channel count of each stage's feature map, shallow to deep.
        reductions: total stride of each stage relative to the input.
        embed_dim: size of the pooled embedding (the classifier's input).
        num_classes: classifier outputs; 0 when the encoder has no classifier head.
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    embed_dim: int
    num_classes: int = 0

    @property
    def num_stages(self) -> int:
        return len(self.channels)


@dataclass
class EncoderOutput:
    """One forward pass: every stage's feature map (B x C_i x H_i x W_i), the pooled embedding (B x D) and the
    logits (B x classes) when the encoder has a head."""

    features: list[torch.Tensor]
    embedding: torch.Tensor
    logits: Optional[torch.Tensor] = None

    def detach(self) -> "EncoderOutput":
        return EncoderOutput([f.detach() for f in self.features], self.embedding.detach(),
                             None if self.logits is None else self.logits.detach())


@dataclass(frozen=True)
class TeacherNeeds:
    """Which teacher outputs a distiller reads: lets the teacher-feature cache store only those.

    ``stages`` holds non-negative indices into the teacher's stage list.
    """

    stages: frozenset[int] = field(default_factory=frozenset)
    embedding: bool = False
    logits: bool = False

    def __or__(self, other: "TeacherNeeds") -> "TeacherNeeds":
        return TeacherNeeds(self.stages | other.stages, self.embedding or other.embedding,
                            self.logits or other.logits)
