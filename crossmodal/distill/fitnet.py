"""FitNets: regress a teacher's intermediate feature map (the hint) from the student's."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.distill.spatial import match_spatial
from crossmodal.distill.base import StagewiseDistiller, stage_pairs
from crossmodal.distill.registry import register_distiller
from crossmodal.models.outputs import FeatureSpec

# RepDistiller's default hint layer, an index into the paired stages.
HINT_LAYER = 2


class ConvRegressor(nn.Module):
    """RepDistiller's ``ConvReg`` [0] for maps already brought to the teacher's size: 1x1 conv to the teacher's
    channels, batch norm, ReLU.

    Args:
        in_channels: the student stage's channels.
        out_channels: the teacher stage's channels.

    - [0] RepDistiller, Tian et al., 2020, https://github.com/HobbitLong/RepDistiller (``models/util.py``)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


@register_distiller("fitnet")
class FitNet(StagewiseDistiller):
    """Hint learning: MSE between a regressor of one student stage and the paired teacher stage [0].

    RepDistiller [1] regresses ``feat[hint_layer=2]`` with a ``ConvReg`` whose convolution's kernel or stride
    absorbs a size difference. Across modalities the two inputs need not share a resolution, so here the larger
    map is average-pooled to the smaller one's H x W first (height and width separately), then a 1x1 conv + BN +
    ReLU maps the student's channels to the teacher's: this is exactly ``ConvReg`` whenever the sizes agree.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        stage: which paired stage carries the hint, an index into the deepest-aligned stage list of
            :func:`~crossmodal.distill.base.stage_pairs`; None means RepDistiller's ``hint_layer`` 2 when the two
            encoders pair at least 3 stages, else the deepest paired stage. An explicit index out of range is a
            :class:`~crossmodal.errors.ConfigError`.

    - [0] FitNets: Hints for Thin Deep Nets, Romero et al., 2015, https://arxiv.org/abs/1412.6550
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 100.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, stage: Optional[int] = None) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        depth = min(student.num_stages, teacher.num_stages)
        default = HINT_LAYER if depth > HINT_LAYER else -1
        self.pairs = stage_pairs(student, teacher, None if stage is None else [stage], [default], "fitnet")
        (student_stage, teacher_stage), = self.pairs
        self.regressor = ConvRegressor(student.channels[student_stage], teacher.channels[teacher_stage])

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        student_map, teacher_map = match_spatial(student_map, teacher_map)
        return F.mse_loss(self.regressor(student_map), teacher_map)
