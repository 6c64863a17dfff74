"""``crossmodal train-teacher``: from a validated config to the engine's :class:`~crossmodal.engine.TrainSetup`.

Everything that can be wrong with a config beyond its keys and types (a modality or label set the file does
not have, a channel count, an impossible combination) is found here, before training.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from crossmodal.config import TaskSection, TeacherRunConfig
from crossmodal.data.classes import class_names, resolve_classes
from crossmodal.data.format import Layout
from crossmodal.data.setup import (check_label_sets, ensure_data, for_loader, modality_channels, open_split,
                                   transforms)
from crossmodal.engine import SupervisedTask, TrainSetup
from crossmodal.engine.sampler import check_batch_size
from crossmodal.errors import ConfigError
from crossmodal.models.config import encoder_config
from crossmodal.train.export import finish_run
from crossmodal.train.initial_weights import initialised_encoder


def build_teacher_training(config: TeacherRunConfig, run_dir: str, device: torch.device) -> TrainSetup:
    """An encoder on one modality, trained on class and/or segmentation labels."""
    data, model, task_cfg = config.data, config.model, config.task
    classes, segmentation = task_cfg.classes, task_cfg.segmentation
    if not classes and not segmentation:
        raise ConfigError("task: set task.classes and/or task.segmentation (the label sets to train on)")
    ensure_data(data)
    train_transform, eval_transform = transforms(data)
    channels = modality_channels(data.path, {"model.modality": model.modality})["model.modality"]
    check_label_sets(data.path, {"task.classes": classes, "task.segmentation": segmentation})
    train = open_split(data.path, data.split, [model.modality], [classes, segmentation], train_transform, config.seed,
                       setting="data.split")
    layout = train.layout
    for name, kind in ((classes, "class"), (segmentation, "segmentation")):
        if name and layout.labels[name].type != kind:
            raise ConfigError(f"task.{'classes' if kind == 'class' else 'segmentation'}: '{name}' is a "
                              f"{layout.labels[name].type} label set, not a {kind} one")
    subset = class_subset(task_cfg, layout)
    if subset is not None:
        train.keep_classes(classes, subset)
    check_batch_size(config.train.batch_size, len(train))
    num_classes = (len(subset) if subset is not None else layout.labels[classes].num_classes) if classes else None
    encoder = initialised_encoder(encoder_config(model.encoder, model.modality, channels, "model", num_classes),
                                  model.weights, model.adapt_input, "model", model.modality)
    seg_info = layout.labels[segmentation] if segmentation else None
    task = SupervisedTask(encoder, model.modality, classes, segmentation,
                          num_segmentation_classes=seg_info.num_classes if seg_info else 0,
                          ignore_index=seg_info.ignore_index if seg_info and seg_info.ignore_index is not None
                          else -1, segmentation_weight=task_cfg.segmentation_weight,
                          decoder_channels=task_cfg.decoder_channels)
    eval_data = None
    if data.eval_split is not None:
        eval_data = open_split(data.path, data.eval_split, [model.modality], [classes, segmentation],
                               eval_transform, config.seed, setting="data.eval_split")
        if subset is not None:
            eval_data.keep_classes(classes, subset)
    labels: dict[str, Any] = {"classes": classes, "segmentation": segmentation}
    if subset is not None:  # the classifier's outputs, in order
        labels["class_subset"] = class_names(layout.labels[classes], subset)

    def finish(record: dict[str, Any]) -> None:
        finish_run(run_dir, "train-teacher", config, encoder, model.modality, train, record, labels=labels)

    return TrainSetup("train-teacher", config, run_dir, task, for_loader(train, data.loader, device),
                      None if eval_data is None else for_loader(eval_data, data.loader, device), device, finish)


def class_subset(task_cfg: TaskSection, layout: Layout) -> Optional[list[int]]:
    """The ids of ``task.class_subset`` in ``task.classes``, or None when every class is trained on."""
    if task_cfg.class_subset is None:
        return None
    if not task_cfg.classes:
        raise ConfigError("task.class_subset needs task.classes (the class label set it is a subset of)")
    return resolve_classes(layout.labels[task_cfg.classes], task_cfg.class_subset, "task.class_subset")
