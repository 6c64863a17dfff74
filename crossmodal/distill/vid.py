"""Variational information distillation: a Gaussian with learned variance predicts teacher maps from student maps."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.distill.spatial import default_inner_stages, match_spatial
from crossmodal.distill.base import DistillResult, StagewiseDistiller, stage_pairs
from crossmodal.distill.options import require_positive
from crossmodal.distill.registry import register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec


class VIDHead(nn.Module):
    """One stage pair of RepDistiller's ``VIDLoss`` [0]: a 1x1-conv regressor for the mean and a per-channel
    variance softplus(log_scale) + eps, initialised to ``init_pred_var``.

    Args:
        in_channels: the student stage's channels.
        mid_channels: the regressor's hidden channels (RepDistiller uses the teacher's).
        out_channels: the teacher stage's channels.
        init_pred_var: the variance at initialisation.
        eps: the variance's floor.

    - [0] RepDistiller, Tian et al., 2020, https://github.com/HobbitLong/RepDistiller (``distiller_zoo/VID.py``)
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float,
                 eps: float) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False))
        # Inverse softplus, so that softplus(log_scale) + eps == init_pred_var: log(exp(v) - 1), written so that
        # it cannot overflow for a large v.
        target = init_pred_var - eps
        self.log_scale = nn.Parameter(torch.full((out_channels,), target + math.log(-math.expm1(-target))))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        """The predicted variance of every teacher channel (C_t,)."""
        return F.softplus(self.log_scale) + self.eps

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        student_map, teacher_map = match_spatial(student_map, teacher_map)
        mean = self.regressor(student_map)
        variance = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((mean - teacher_map).pow(2) / variance + variance.log())).mean()


@register_distiller("vid")
class VID(StagewiseDistiller):
    """Variational information distillation [0] as RepDistiller's ``VIDLoss`` [1], summed over stage pairs.

    The larger map of each pair is average-pooled to the smaller one's H x W (height and width separately)
    before the regressor, as RepDistiller does.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        stages: indices into the deepest-aligned stage list (:func:`~crossmodal.distill.base.stage_pairs`);
            None means every paired stage except the shallowest (RepDistiller's ``feat[1:-1]``).
        init_pred_var: the predicted variance at initialisation, a finite number above ``eps``.
        eps: the variance's floor, a finite positive number.

    - [0] Variational Information Distillation for Knowledge Transfer, Ahn et al., 2019,
      https://arxiv.org/abs/1904.05835
    - [1] RepDistiller (CRD), Tian et al., 2020, https://github.com/HobbitLong/RepDistiller
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, stages: Optional[Sequence[int]] = None,
                 init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        require_positive("init_pred_var", init_pred_var, "vid")
        require_positive("eps", eps, "vid")
        if not init_pred_var > eps:
            raise ConfigError(f"vid: 'init_pred_var' ({init_pred_var}) must exceed 'eps' ({eps})")
        depth = min(student.num_stages, teacher.num_stages)
        self.pairs = stage_pairs(student, teacher, stages, default_inner_stages(depth), "vid")
        self.heads = nn.ModuleList(
            VIDHead(student.channels[s], teacher.channels[t], teacher.channels[t], float(init_pred_var), float(eps))
            for s, t in self.pairs)

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        return self.heads[position](student_map, teacher_map)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        result = super().forward(student, teacher, index, labels)
        result.logs["mean_variance"] = torch.cat([head.variance().detach() for head in self.heads]).mean()
        return result
