"""Learning-rate schedules as pure functions of the step: nothing to checkpoint beyond the step itself."""
from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crossmodal.config import ScheduleSection


def learning_rate(schedule: ScheduleSection, base_lr: float, step: int, steps_per_epoch: int,
                  epochs: int) -> float:
    """The rate at optimizer step ``step`` (0-based) of a run of ``epochs`` x ``steps_per_epoch`` steps.

    A linear warm-up over ``warmup_epochs`` (from ``base_lr / warmup_steps`` up to ``base_lr``), then ``cosine``
    (from ``base_lr`` towards ``min_lr``, reached at the end of the run), ``step`` (times ``gamma`` at each epoch in ``milestones``) or ``constant``.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, int(round(schedule.warmup_epochs * steps_per_epoch)))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    name = schedule.name
    if name == "constant":
        return base_lr
    if name == "step":
        passed = bisect.bisect_right(sorted(schedule.milestones), step / steps_per_epoch)
        return base_lr * schedule.gamma ** passed
    # progress (step - warmup) / (steps after warm-up): min_lr is where the curve ends, after the last step, so
    # no step is spent at a rate of 0 (PyTorch's and timm's per-step cosine do the same)
    progress = (step - warmup) / max(1, total - warmup)
    min_lr = schedule.min_lr
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
