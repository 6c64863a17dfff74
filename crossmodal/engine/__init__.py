"""The training engine below ``train`` and ``eval``: the step loop, checkpoints, the epoch sampler, learning-rate
schedules, metric logs, confusion-matrix metrics, and the :class:`Task` contract they train.

``crossmodal train-teacher``, ``crossmodal distill`` (:mod:`crossmodal.train`) and ``crossmodal segment``
(:mod:`crossmodal.eval.segment`) are its users: each builds a :class:`Task` and a :class:`TrainSetup`.
"""
from crossmodal.engine.loop import Trainer, TrainingDiverged
from crossmodal.engine.setup import Hook, TrainSetup
from crossmodal.engine.supervised import SupervisedTask, masked_cross_entropy
from crossmodal.engine.task import Task

__all__ = ["Hook", "SupervisedTask", "Task", "TrainSetup", "Trainer", "TrainingDiverged", "masked_cross_entropy"]
