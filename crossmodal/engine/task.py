"""The contract between the training engine and what it trains."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn


class Task(nn.Module):
    """Base class of everything the :class:`~crossmodal.engine.Trainer` trains: a module that turns a batch into
    a loss, and a split into metrics.

    Subclasses implement :meth:`forward` and :meth:`evaluate` and, when some of their parameters may receive no
    gradient in a step, say so in :meth:`may_leave_parameters_unused` (DistributedDataParallel must then look
    for them each step, which costs time, so a task that uses all of them says False). The engine owns
    everything else: devices, the optimiser, the schedule, logging, checkpoints, resume and processes.

    Examples:
        >>> class Mean(Task):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = nn.Parameter(torch.zeros(()))
        ...     def forward(self, batch):
        ...         loss = (batch["x"] - self.w).pow(2).mean()
        ...         return loss, {}
        ...     def evaluate(self, batches):
        ...         return {"w": float(self.w)}
        ...     def may_leave_parameters_unused(self):
        ...         return False
        >>> Mean()({"x": torch.ones(4)})[0].item()
        1.0
    """

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch (a scalar with a gradient) and detached scalars to log, by name (tensors, so
        that logging needs no device synchronisation inside the step)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Metrics over an evaluation split; under DDP each rank sees its part, and the task sums its counts over
        ranks (:func:`crossmodal.runtime.all_reduce_sum`)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch's first step (``epoch`` counts from 0; a run resumed mid-epoch
        hears its epoch again), for losses that change with training progress (DKD's warm-up). Default: nothing."""

    def may_leave_parameters_unused(self) -> bool:
        """Whether a step may leave some trainable parameter without a gradient (default: True, the safe
        answer)."""
        return True
