"""The one interface every distiller implements, and the stage-pairing rule they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch
from torch import nn

from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


@dataclass
class DistillResult:
    """A distiller's unweighted loss and detached scalars worth logging (tensors, so logging never forces a
    device synchronisation inside the step)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class: a loss between a student's and a frozen teacher's outputs on the same samples.

    Subclasses are constructed as ``Cls(student_spec, teacher_spec, num_samples=N, labels=None, **options)``,
    with their options keyword-only, so that the registry can check option names before building anything.
    Everything stateful (heads, regressors, memory banks) is a submodule, parameter or buffer, so it is in
    ``state_dict`` and therefore in every checkpoint.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: N, the number of samples in the transfer set (sample indices lie in [0, N)).
        labels: optional (N,) class of every transfer sample (-1 unlabelled), for distillers that may use them.
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.student_spec = student
        self.teacher_spec = teacher
        self.num_samples = int(num_samples)

    def teacher_needs(self) -> TeacherNeeds:
        """The teacher outputs this distiller reads."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Hears the epoch about to be trained (from 0; again after a resume) before its first step. Default:
        nothing; a loss that changes with training progress (DKD's warm-up) keeps it."""

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        """Loss for one batch. ``index`` holds each sample's position in the transfer set (B,)."""
        raise NotImplementedError


class StagewiseDistiller(Distiller):
    """A distiller whose loss is computed per (student stage, teacher stage) pair and summed over the pairs.

    Subclasses set ``self.pairs`` (from :func:`stage_pairs`) and implement :meth:`pair_loss`; every pair's term
    is logged as ``stage_s<i>_t<j>``.
    """

    pairs: list[tuple[int, int]]

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(stages=frozenset(teacher_stage for _, teacher_stage in self.pairs))

    def pair_loss(self, position: int, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        """The loss of the ``position``-th pair, given the two (detached teacher) maps."""
        raise NotImplementedError

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        parts = {f"stage_s{s}_t{t}": self.pair_loss(position, student.features[s], teacher.features[t].detach())
                 for position, (s, t) in enumerate(self.pairs)}
        loss = torch.stack(list(parts.values())).sum()
        return DistillResult(loss, {key: part.detach() for key, part in parts.items()})


def stage_pairs(student: FeatureSpec, teacher: FeatureSpec, stages: Optional[Sequence[int]],
                default: Sequence[int], method: str) -> list[tuple[int, int]]:
    """Pair student and teacher stages, aligned at the deepest stage.

    The two encoders may have different numbers of stages; the deepest ``min`` stages of each are paired,
    deepest with deepest. ``stages`` (or ``default``) index that aligned list like a Python list (0 is the
    shallowest paired stage, -1 the deepest). Returns (student_stage, teacher_stage) non-negative indices.

    Raises:
        ConfigError: ``stages`` is not a list of indices, is empty, holds an index out of range, or names one
            stage twice (``[0, 0]``, or ``[0, -depth]``).
    """
    depth = min(student.num_stages, teacher.num_stages)
    s_offset, t_offset = student.num_stages - depth, teacher.num_stages - depth
    if stages is not None and (isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence)):
        raise ConfigError(f"{method}: 'stages' must be a list of stage indices, got {stages!r}")
    chosen = list(default if stages is None else stages)
    if not chosen:
        raise ConfigError(f"{method}: 'stages' is empty; give at least one stage index")
    pairs = []
    for position in chosen:
        if not isinstance(position, int) or isinstance(position, bool) or not -depth <= position < depth:
            raise ConfigError(f"{method}: stage {position!r} is out of range; the paired encoders have "
                              f"{depth} stages (indices {-depth}..{depth - 1})")
        aligned = position % depth
        pair = (s_offset + aligned, t_offset + aligned)
        if pair in pairs:
            raise ConfigError(f"{method}: 'stages' {chosen!r} names paired stage {aligned} twice; give each once")
        pairs.append(pair)
    return pairs
