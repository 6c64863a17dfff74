"""From a validated config to a :class:`~crossmodal.train.engine.TrainSetup`: one builder per training verb.

Everything that can be wrong with a config beyond its keys and types (a modality or label set the file does
not have, a channel count, a distiller option, an impossible combination) is found here, before training.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping, Optional

import torch

from crossmodal import __version__, distributed
from crossmodal.data.classes import class_names, resolve_classes
from crossmodal.distill import create_distiller, distiller_options, get_distiller
from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.errors import ConfigError, DataError
from crossmodal.models.encoder import Encoder, create_encoder
from crossmodal.models.outputs import TeacherNeeds
from crossmodal.models.teacher import FrozenTeacher
from crossmodal.train.distillation import DistillTask, TeacherView
from crossmodal.train.engine import TrainSetup
from crossmodal.train.export import MODEL_CARD, export_encoder, load_snippet, write_model_card
from crossmodal.train.run import (check_batch_size, encoder_config, ensure_data, modality_channels,
                                  modality_channels_in, open_dataset, transforms)
from crossmodal.train.supervised import SupervisedTask

TEACHER_WEIGHTS = "teacher.safetensors"
STUDENT_WEIGHTS = "student.safetensors"
CACHE_NAME = "teacher_cache.h5"


def build_teacher_training(config: Mapping[str, Any], run_dir: str, device: torch.device) -> TrainSetup:
    """``crossmodal train-teacher``: an encoder on one modality, trained on class and/or segmentation labels."""
    data, model, task_cfg = config["data"], config["model"], config["task"]
    classes, segmentation = task_cfg["classes"], task_cfg["segmentation"]
    if not classes and not segmentation:
        raise ConfigError("task: set task.classes and/or task.segmentation (the label sets to train on)")
    ensure_data(data)
    train_transform, eval_transform = transforms(data)
    modality_channels_in(data, {"model.modality": model["modality"]})
    train = open_dataset(data, data["split"], [model["modality"]], [classes, segmentation], train_transform,
                         config["seed"])
    layout = train.layout
    for name, kind in ((classes, "class"), (segmentation, "segmentation")):
        if name and layout.labels[name].type != kind:
            raise ConfigError(f"task.{'classes' if kind == 'class' else 'segmentation'}: '{name}' is a "
                              f"{layout.labels[name].type} label set, not a {kind} one")
    subset = _class_subset(task_cfg, layout)
    if subset is not None:
        train.keep_classes(classes, subset)
    check_batch_size(config["train"]["batch_size"], len(train))
    num_classes = (len(subset) if subset is not None else layout.labels[classes].num_classes) if classes else None
    encoder = create_encoder({**encoder_config(model["encoder"], modality_channels(train, model["modality"]),
                                               "model", num_classes),
                              "weights": model["weights"]})
    seg_info = layout.labels[segmentation] if segmentation else None
    task = SupervisedTask(encoder, model["modality"], classes, segmentation,
                          num_segmentation_classes=seg_info.num_classes if seg_info else 0,
                          ignore_index=seg_info.ignore_index if seg_info and seg_info.ignore_index is not None
                          else -1, segmentation_weight=task_cfg["segmentation_weight"],
                          decoder_channels=task_cfg["decoder_channels"])
    eval_data = _eval_dataset(data, [model["modality"]], [classes, segmentation], eval_transform, config["seed"])
    if eval_data is not None and subset is not None:
        eval_data.keep_classes(classes, subset)
    labels = {"classes": classes, "segmentation": segmentation}
    if subset is not None:  # the classifier's outputs, in order
        labels["class_subset"] = class_names(layout.labels[classes], subset)

    def finish(record: dict[str, Any]) -> None:
        export_encoder(encoder, os.path.join(run_dir, TEACHER_WEIGHTS))
        write_model_card(os.path.join(run_dir, MODEL_CARD), _card(
            "train-teacher", config, encoder, TEACHER_WEIGHTS, model["modality"], train, record, labels=labels))
        print(f"teacher written to {os.path.join(run_dir, TEACHER_WEIGHTS)}")

    return TrainSetup("train-teacher", config, run_dir, task, train, eval_data, device, finish)


def build_distillation(config: Mapping[str, Any], run_dir: str, device: torch.device) -> TrainSetup:
    """``crossmodal distill``: a modality-B student from a frozen modality-A teacher."""
    data, teacher_cfg, student_cfg, loss_cfg = config["data"], config["teacher"], config["student"], config["loss"]
    distillers_cfg = _distiller_plan(config)
    class_labels = loss_cfg["class_labels"]
    if loss_cfg["ce"] > 0 and not class_labels:
        raise ConfigError("loss.ce > 0 needs loss.class_labels (the class label set of the transfer split)")
    ensure_data(data)
    train_transform, eval_transform = transforms(data)
    use_cache = _use_cache(teacher_cfg["cache"], data["augment"])
    tm, sm = teacher_cfg["modality"], student_cfg["modality"]
    channels = modality_channels_in(data, {"teacher.modality": tm, "student.modality": sm})
    train = open_dataset(data, data["split"], [sm] + ([] if use_cache else [tm]), [class_labels], train_transform,
                         config["seed"])
    check_batch_size(config["train"]["batch_size"], len(train))
    num_classes = train.layout.labels[class_labels].num_classes if class_labels else None
    if class_labels and train.layout.labels[class_labels].type != "class":
        raise ConfigError(f"loss.class_labels: '{class_labels}' is not an image-level class label set")

    teacher_encoder_cfg, teacher_weights = _teacher_source(teacher_cfg)
    teacher_channels = channels["teacher.modality"]
    teacher = FrozenTeacher(create_encoder({**encoder_config(teacher_encoder_cfg, teacher_channels, "teacher"),
                                            "weights": teacher_weights})).to(device)
    if teacher_weights is None and distributed.rank() == 0:
        print("warning: teacher.weights is null, so the teacher is randomly initialised (fine for a smoke test, "
              "meaningless otherwise)", flush=True)
    student_config = encoder_config(student_cfg["encoder"], modality_channels(train, sm), "student")
    if loss_cfg["ce"] > 0:
        student_config = encoder_config(student_config, modality_channels(train, sm), "student", num_classes)
    student = create_encoder({**student_config, "weights": student_cfg["weights"]})

    labels = (torch.from_numpy(train.class_values[class_labels][train.rows]).long() if class_labels else None)
    distillers = {}
    for name, (_, options) in distillers_cfg.items():
        try:
            distillers[name] = create_distiller(name, student.spec, teacher.spec, num_samples=len(train),
                                                labels=labels, **options)
        except ConfigError as err:  # name the config key that leads to it
            key = "loss.kd" if name == "kd" and loss_cfg["kd"] > 0 else f"distill.options.{name}"
            raise ConfigError(f"{key}: {err}") from None
    weights = {name: weight for name, (weight, _) in distillers_cfg.items()}
    needs = TeacherNeeds()
    for distiller in distillers.values():
        needs = needs | distiller.teacher_needs()
    cache = None
    if use_cache and distillers:
        cache = _teacher_cache(config, run_dir, teacher, tm, needs, eval_transform, device)
    task = DistillTask(student, sm, TeacherView(teacher, tm, cache), distillers, weights, loss_cfg["ce"],
                       class_labels)
    eval_data = None
    if class_labels and student.num_classes:
        eval_data = _eval_dataset(data, [sm], [class_labels], eval_transform, config["seed"])

    def finish(record: dict[str, Any]) -> None:
        export_encoder(student, os.path.join(run_dir, STUDENT_WEIGHTS))
        extra = {"teacher": {"modality": tm, "encoder": teacher.encoder.config, "weights": teacher_weights,
                             "fingerprint": teacher.fingerprint(), "cached": cache is not None},
                 "distillers": {name: {"weight": weight, "options": options}
                                for name, (weight, options) in distillers_cfg.items()},
                 "loss": {"ce": loss_cfg["ce"], "class_labels": class_labels}}
        write_model_card(os.path.join(run_dir, MODEL_CARD),
                         _card("distill", config, student, STUDENT_WEIGHTS, sm, train, record, **extra))
        print(f"student written to {os.path.join(run_dir, STUDENT_WEIGHTS)}")

    return TrainSetup("distill", config, run_dir, task, train, eval_data, device, finish)


# --------------------------------------------------------------------------------------------------- helpers
def _class_subset(task_cfg: Mapping[str, Any], layout) -> Optional[list[int]]:
    """The ids of ``task.class_subset`` in ``task.classes``, or None when every class is trained on."""
    if task_cfg["class_subset"] is None:
        return None
    if not task_cfg["classes"]:
        raise ConfigError("task.class_subset needs task.classes (the class label set it is a subset of)")
    return resolve_classes(layout.labels[task_cfg["classes"]], task_cfg["class_subset"], "task.class_subset")


def _distiller_plan(config: Mapping[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
    """name -> (weight, options) of every loss term but CE, checked: registered names, known option names,
    numeric weights; KD from ``loss.kd`` joins them."""
    section = config["distill"]
    names = list(section["name"])
    if len(set(names)) != len(names):
        raise ConfigError(f"distill.name lists a distiller twice: {names}")
    for key, listed in (("name", names), ("weights", section["weights"]), ("options", section["options"])):
        for name in listed:
            try:
                get_distiller(name)
            except ConfigError as err:  # unknown: one line naming the key and the registered names
                raise ConfigError(f"distill.{key}{'' if key == 'name' else '.' + str(name)}: {err}") from None
    for name, options in section["options"].items():
        if not isinstance(options, Mapping):
            raise ConfigError(f"distill.options.{name} must be a mapping of option: value, got {options!r}")
        accepted = distiller_options(name)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"distill.options.{name}.{unknown[0]}: '{name}' has no such option; its options: "
                              f"{', '.join(accepted) or '(none)'}")
    for name, weight in section["weights"].items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"distill.weights.{name} must be a number >= 0, got {weight!r}")
    kd_weight = config["loss"]["kd"]
    if kd_weight > 0:
        if "kd" in names:
            raise ConfigError("KD is both in distill.name and weighted by loss.kd; use one of the two")
        names.append("kd")
    plan = {}
    for name in names:
        weight = kd_weight if name == "kd" and kd_weight > 0 else section["weights"].get(
            name, get_distiller(name).default_weight)
        plan[name] = (float(weight), dict(section["options"].get(name, {})))
    if not plan and config["loss"]["ce"] == 0:
        raise ConfigError("nothing to train: distill.name is empty and loss.ce and loss.kd are 0")
    return plan


def _use_cache(mode: str | bool, augment: bool) -> bool:
    """``teacher.cache``: auto (on when the data are not augmented), true or false."""
    if mode is True and augment:
        raise ConfigError("teacher.cache=true needs an unaugmented teacher view; set data.augment=false or "
                          "teacher.cache=auto")
    return mode is True or (mode == "auto" and not augment)


def _teacher_source(teacher_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], Optional[str]]:
    """(encoder config, weight file) of the teacher; ``weights`` may be a train-teacher run folder, whose model
    card supplies the encoder config when ``teacher.encoder`` is not given."""
    weights, encoder = teacher_cfg["weights"], teacher_cfg["encoder"]
    if weights is not None and os.path.isdir(weights):
        card_path = os.path.join(weights, MODEL_CARD)
        try:
            with open(card_path, encoding="utf-8") as handle:
                card = json.load(handle)
            file_name, card_encoder = card["weights"], card["encoder"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(weights, f"teacher.weights is a folder but not a finished run (no readable "
                                     f"{MODEL_CARD})") from None
        weights = os.path.join(weights, file_name)
        encoder = encoder if encoder is not None else {k: v for k, v in card_encoder.items() if v is not None}
    elif weights is not None and not os.path.isfile(weights):
        raise DataError(weights, "no such teacher weight file (teacher.weights)")
    if encoder is None:
        raise ConfigError("teacher.encoder is missing (it may be omitted only when teacher.weights is a "
                          "train-teacher run folder)")
    return dict(encoder), weights


def _teacher_cache(config: Mapping[str, Any], run_dir: str, teacher: FrozenTeacher, modality: str,
                   needs: TeacherNeeds, transform, device: torch.device) -> TeacherFeatureCache:
    """Build the cache on rank 0 (the others wait), then open it everywhere."""
    data, teacher_cfg = config["data"], config["teacher"]
    path = teacher_cfg["cache_path"] or os.path.join(run_dir, CACHE_NAME)
    view = open_dataset(data, data["split"], [modality], [], transform, config["seed"])
    options = dict(batch_size=config["train"]["batch_size"], num_workers=data["num_workers"],
                   progress=config["train"]["progress"], stage_dtype=teacher_cfg["cache_dtype"])
    if distributed.rank() == 0:
        cache = TeacherFeatureCache.build_or_load(path, teacher, view, modality, needs, **options)
    if distributed.is_distributed():
        torch.distributed.barrier()
        if distributed.rank() != 0:
            cache = TeacherFeatureCache.build_or_load(path, teacher, view, modality, needs, **options)
    return cache


def _eval_dataset(data: Mapping[str, Any], modalities, labels, transform, seed: int):
    split = data["eval_split"]
    if split is None:
        return None
    return open_dataset(data, split, modalities, labels, transform, seed)


def _card(verb: str, config: Mapping[str, Any], encoder: Encoder, weights_name: str, modality: str, train,
          record: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "format": "crossmodal-model-card/1",
        "verb": verb,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "crossmodal_version": __version__,
        "weights": weights_name,
        "modality": modality,
        "encoder": encoder.config,
        "data": {"path": config["data"]["path"], "split": config["data"]["split"], "num_samples": len(train),
                 "eval_split": config["data"]["eval_split"], "size": config["data"]["size"],
                 "augment": config["data"]["augment"]},
        **extra,
        "processes": distributed.world_size(),
        "final_metrics": {k: v for k, v in record.items() if k != "scope"},
        "load_with_timm": load_snippet(encoder, weights_name),
        "config": dict(config),
    }
