"""A light FCN-style decoder that turns an encoder's stage maps into per-pixel class scores."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.errors import ConfigError
from crossmodal.models.outputs import FeatureSpec


class SegmentationHead(nn.Module):
    """FCN with a feature-pyramid merge, kept small so that the encoder does the work.

    Each chosen stage is projected to ``channels`` by a 1x1 convolution (with BatchNorm and ReLU), upsampled
    bilinearly to the finest chosen stage and summed; a 3x3 convolution block and a 1x1 classifier follow, and
    the scores are upsampled to the input size.

    Args:
        spec: the encoder's sizes.
        num_classes: output classes.
        channels: decoder width.
        stages: encoder stages to merge (indices into the stage list, negative from the deepest);
            default: the deepest three (or all, when fewer).

    Examples:
        >>> head = SegmentationHead(encoder.spec, num_classes=13)
        >>> scores = head(encoder(x).features, size=x.shape[-2:])  # B x 13 x H x W

    References:
        - [0] FCN, Long et al., 2015, https://arxiv.org/abs/1411.4038
        - [1] FPN, Lin et al., 2017, https://arxiv.org/abs/1612.03144
    """

    def __init__(self, spec: FeatureSpec, num_classes: int, channels: int = 64,
                 stages: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if num_classes < 1 or channels < 1:
            raise ConfigError(f"segmentation head: need num_classes >= 1 and channels >= 1, got "
                              f"{num_classes}, {channels}")
        depth = spec.num_stages
        chosen = list(range(max(0, depth - 3), depth)) if stages is None else [s % depth for s in stages
                                                                               if -depth <= s < depth]
        if stages is not None and (not chosen or len(chosen) != len(stages)):
            raise ConfigError(f"segmentation head: stages {list(stages)} must name at least one of the encoder's "
                              f"{depth} stages (0..{depth - 1}, or -{depth}..-1 from the deepest)")
        self.stages = sorted(set(chosen))
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(spec.channels[s], channels, 1, bias=False), nn.BatchNorm2d(channels),
                          nn.ReLU(inplace=True)) for s in self.stages)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        maps = [features[s] for s in self.stages]
        target = maps[0].shape[-2:]
        merged = sum(F.interpolate(lateral(m), size=target, mode="bilinear", align_corners=False)
                     if m.shape[-2:] != target else lateral(m) for lateral, m in zip(self.lateral, maps))
        scores = self.classifier(self.fuse(merged))
        return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
