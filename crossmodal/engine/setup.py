"""What a verb hands to the :class:`~crossmodal.engine.Trainer`: a :class:`TrainSetup` (its config, task, data,
device and run folder), and the two kinds of training data the engine reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Union, runtime_checkable

import torch
from torch.utils.data import Dataset

from crossmodal.config import RunConfig
from crossmodal.engine.task import Task

if TYPE_CHECKING:
    from crossmodal.engine.loop import Trainer

Hook = Callable[["Trainer"], None]  # called after every step


@runtime_checkable
class BatchSource(Protocol):
    """A data set that assembles whole batches itself, on the training device (``data.loader: device``, e.g.
    :class:`crossmodal.data.device.DeviceResidentData`): the engine hands it the sampler's index lists instead
    of building a DataLoader, so the sampler still decides each batch's samples (and where a resumed epoch
    starts); ``data.num_workers`` is unused."""

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> Mapping[str, Any]:
        """The collated batch of the samples at ``indices`` (int64 positions, on the training device)."""
        ...


TrainData = Union[Dataset, BatchSource]


@dataclass
class TrainSetup:
    """What a verb hands to the :class:`Trainer`.

    Args:
        verb: the CLI verb (recorded in checkpoints: a distill run cannot resume a teacher's checkpoint).
        config: the resolved config (the engine reads its seed, data, optim, schedule and train sections).
        run_dir: the run folder (the same path on every rank).
        task: what is trained.
        train_data: the training set (items carry ``index``), a map-style Dataset read by a DataLoader or a
            :class:`BatchSource`; ``set_epoch`` is called when it has one.
        eval_data: evaluated every ``train.eval_every`` epochs (the same two kinds), or None.
        device: where the task runs.
        finish: called on rank 0 after the last epoch with the final epoch record (exports, model card).
    """

    verb: str
    config: RunConfig
    run_dir: str
    task: Task
    train_data: TrainData
    eval_data: Optional[TrainData]
    device: torch.device
    finish: Callable[[dict[str, Any]], None] = lambda metrics: None
    hooks: list[Hook] = field(default_factory=list)
