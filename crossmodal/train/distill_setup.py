"""``crossmodal distill``: from a validated config to the engine's :class:`~crossmodal.engine.TrainSetup`.

The distillers named by the config are checked (names, options, weights) before any data is read; the teacher
comes from a weight file or a train-teacher run folder (whose model card gives its modality and the encoder keys
the config does not set); its outputs are cached when the teacher's view of the data is not augmented.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import torch

from crossmodal import run_folder, runtime
from crossmodal.config import DistillRunConfig, TeacherSection
from crossmodal.data.modalities import MODALITIES
from crossmodal.data.setup import (check_label_sets, ensure_data, for_loader, modality_channels, open_split,
                                   transforms)
from crossmodal.distill import check_options, create_distiller, get_distiller
from crossmodal.distill.teacher_cache import TeacherFeatureCache
from crossmodal.engine import TrainSetup
from crossmodal.engine.sampler import check_batch_size
from crossmodal.errors import ConfigError, DataError
from crossmodal.models.config import encoder_config
from crossmodal.models.outputs import TeacherNeeds
from crossmodal.models.pretrained import card_input, renormalisation
from crossmodal.models.teacher import FrozenTeacher
from crossmodal.models.weights import check_recorded_config
from crossmodal.train.distillation import DistillTask, TeacherView
from crossmodal.train.export import finish_run
from crossmodal.train.initial_weights import initialised_encoder

# What a frozen teacher's weight file must agree on with teacher.encoder, when the file records its encoder: the
# teacher is used as it is, so another architecture, stem or input normalisation would silently change what it
# computes (input channels are adapted only with teacher.adapt_input; a classifier of another size is dropped).
TEACHER_KEYS = ("name", "small_input", "input_norm")

Plan = dict[str, tuple[float, dict[str, Any]]]


def build_distillation(config: DistillRunConfig, run_dir: str, device: torch.device) -> TrainSetup:
    """A modality-B student from a frozen modality-A teacher."""
    data, teacher_cfg, student_cfg, loss_cfg = config.data, config.teacher, config.student, config.loss
    plan = distiller_plan(config)
    teacher_encoder_cfg, teacher_weights, tm = teacher_source(teacher_cfg)  # before any data is read
    class_labels = loss_cfg.class_labels
    if loss_cfg.ce > 0 and not class_labels:
        raise ConfigError("loss.ce > 0 needs loss.class_labels (the class label set of the transfer split)")
    ensure_data(data)
    train_transform, eval_transform = transforms(data)
    use_cache = _use_cache(teacher_cfg.cache, data.augment)
    sm = student_cfg.modality
    channels = modality_channels(data.path, {"teacher.modality": tm, "student.modality": sm})
    check_label_sets(data.path, {"loss.class_labels": class_labels})
    train = open_split(data.path, data.split, [sm] + ([] if use_cache else [tm]), [class_labels], train_transform,
                       config.seed, setting="data.split")
    check_batch_size(config.train.batch_size, len(train))
    num_classes = train.layout.labels[class_labels].num_classes if class_labels else None
    if class_labels and train.layout.labels[class_labels].type != "class":
        raise ConfigError(f"loss.class_labels: '{class_labels}' is not an image-level class label set")

    teacher_config = encoder_config(teacher_encoder_cfg, tm, channels["teacher.modality"], "teacher")
    if teacher_weights is not None:
        against = "teacher.encoder" if teacher_cfg.encoder else "the run's model card"
        keys = TEACHER_KEYS if not teacher_cfg.adapt_input else tuple(k for k in TEACHER_KEYS if k != "input_norm")
        check_recorded_config(teacher_weights, teacher_config, against, keys, tm)  # adapted: renormalised too
    teacher = FrozenTeacher(initialised_encoder(teacher_config, teacher_weights, teacher_cfg.adapt_input, "teacher",
                                                tm)).to(device)
    if teacher_weights is None and runtime.rank() == 0:
        print("warning: teacher.weights is null, so the teacher is randomly initialised (fine for a smoke test, "
              "meaningless otherwise)", flush=True)
    student_config = encoder_config(student_cfg.encoder, sm, channels["student.modality"], "student",
                                    num_classes if loss_cfg.ce > 0 else None)
    student = initialised_encoder(student_config, student_cfg.weights, student_cfg.adapt_input, "student", sm)

    labels = (torch.from_numpy(train.class_values[class_labels][train.rows]).long() if class_labels else None)
    distillers = {}
    for name, (_, options) in plan.items():
        try:
            distillers[name] = create_distiller(name, student.spec, teacher.spec, num_samples=len(train),
                                                labels=labels, **options)
        except ConfigError as err:  # name the config key that leads to it
            key = "loss.kd" if name == "kd" and loss_cfg.kd > 0 else f"distill.options.{name}"
            raise ConfigError(f"{key}: {err}") from None
    weights = {name: weight for name, (weight, _) in plan.items()}
    needs = TeacherNeeds()
    for distiller in distillers.values():
        needs = needs | distiller.teacher_needs()
    cache = None
    if use_cache and distillers:
        cache = _teacher_cache(config, run_dir, teacher, tm, needs, eval_transform)
    task = DistillTask(student, sm, TeacherView(teacher, tm, cache), distillers, weights, loss_cfg.ce, class_labels)
    eval_data = None
    if class_labels and student.num_classes and data.eval_split is not None:
        eval_data = open_split(data.path, data.eval_split, [sm], [class_labels], eval_transform, config.seed,
                               setting="data.eval_split")

    def finish(record: dict[str, Any]) -> None:
        finish_run(run_dir, "distill", config, student, sm, train, record,
                   teacher={"modality": tm, "encoder": teacher.encoder.config, "weights": teacher_weights,
                            "fingerprint": teacher.fingerprint(), "cached": cache is not None},
                   distillers={name: {"weight": weight, "options": options}
                               for name, (weight, options) in plan.items()},
                   loss={"ce": loss_cfg.ce, "class_labels": class_labels})

    # the teacher cache above read its own plain view of the split; the engine reads these as data.loader says
    return TrainSetup("distill", config, run_dir, task, for_loader(train, data.loader, device),
                      None if eval_data is None else for_loader(eval_data, data.loader, device), device, finish)


def distiller_plan(config: DistillRunConfig) -> Plan:
    """name -> (weight, options) of every loss term but CE, checked: registered names, known option names,
    numeric weights; KD from ``loss.kd`` joins them."""
    section = config.distill
    names = list(section.name)
    if len(set(names)) != len(names):
        raise ConfigError(f"distill.name lists a distiller twice: {names}")
    for key, listed in (("name", names), ("weights", section.weights), ("options", section.options)):
        for name in listed:
            try:
                get_distiller(name)
            except ConfigError as err:  # unknown: one line naming the key and the registered names
                raise ConfigError(f"distill.{key}{'' if key == 'name' else '.' + str(name)}: {err}") from None
    for name, options in section.options.items():
        if not isinstance(options, Mapping):
            raise ConfigError(f"distill.options.{name} must be a mapping of option: value, got {options!r}")
        check_options(name, options, key=f"distill.options.{name}")
    for name, weight in section.weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"distill.weights.{name} must be a number >= 0, got {weight!r}")
    kd_weight = config.loss.kd
    if kd_weight > 0:
        if "kd" in names:
            raise ConfigError("KD is both in distill.name and weighted by loss.kd; use one of the two")
        names.append("kd")
    plan = {}
    for name in names:
        weight = kd_weight if name == "kd" and kd_weight > 0 else section.weights.get(
            name, get_distiller(name).default_weight)
        plan[name] = (float(weight), dict(section.options.get(name, {})))
    if not plan and config.loss.ce == 0:
        raise ConfigError("nothing to train: distill.name is empty and loss.ce and loss.kd are 0")
    return plan


def teacher_source(teacher_cfg: TeacherSection) -> tuple[dict[str, Any], Optional[str], str]:
    """(encoder config, weight file, modality) of the teacher.

    ``weights`` may be a train-teacher run folder: its model card gives the modality when ``teacher.modality`` is
    not set, and every encoder key ``teacher.encoder`` does not set (architecture, stem, ``input_norm`` ...). A
    ``teacher.modality`` other than the run's is an error, unless ``teacher.adapt_input`` is true (the first
    convolution is then adapted, and the card's input channels and normalisation are not taken).

    Raises:
        ConfigError: ``teacher.modality: rgb, but the teacher run RUN was trained on lab_l; ...``, or a missing
            modality or encoder without a run folder.
        DataError: a missing weight file, a folder without a model card, weights that disagree with the card.
    """
    weights, encoder, modality = teacher_cfg.weights, teacher_cfg.encoder, teacher_cfg.modality
    if weights is not None and os.path.isdir(weights):
        try:
            card = run_folder.read_model_card(weights)
        except DataError as err:
            if err.path != weights:  # it names the file inside the folder (a card that is not valid JSON)
                raise
            raise DataError(weights, f"teacher.weights is a folder but {err.problem}") from None
        trained_on = card["modality"]
        if modality is None:
            modality = trained_on
        elif modality != trained_on and not teacher_cfg.adapt_input:
            raise ConfigError(f"teacher.modality: {modality}, but the teacher run {weights} was trained on "
                              f"{trained_on}; drop teacher.modality or set it to {trained_on}")
        inherited = {k: v for k, v in card["encoder"].items() if v is not None}
        expects = card_input(card, weights)  # an imported network: the input it expects, checked
        if modality != trained_on:  # adapted to another modality: the card's channels and normalisation are not it
            inherited = {k: v for k, v in inherited.items() if k not in ("in_chans", "input_norm")}
            if expects is not None:  # renormalised for the new modality, as the card says the network expects
                inherited["input_norm"] = _renormalised(expects, modality)
        encoder = {**inherited, **(encoder or {})}
        weights = run_folder.card_weights(weights, card)
        if os.path.isfile(weights):  # the run's weight file is the one its card describes
            check_recorded_config(weights, card["encoder"], "the run's model card", expected_modality=trained_on)
    elif weights is not None and not os.path.isfile(weights):
        raise DataError(weights, "no such teacher weight file (teacher.weights)")
    if modality is None:
        raise ConfigError("teacher.modality is missing (it may be omitted only when teacher.weights is a "
                          "train-teacher run folder)")
    if encoder is None:
        raise ConfigError("teacher.encoder is missing (it may be omitted only when teacher.weights is a "
                          "train-teacher run folder)")
    return dict(encoder), weights, modality


def _renormalised(expects: Mapping[str, Any], modality: str) -> Optional[list]:
    """``input_norm`` that feeds ``modality``'s data to a network expecting the card's ``input`` mean and std."""
    definition = MODALITIES.get(modality)
    if definition is None or definition.pixels is None:
        raise ConfigError(f"teacher.modality: {modality} has no pixel statistics to renormalise for the imported "
                          f"network (image modalities: rgb, lab_l)")
    norm = renormalisation((tuple(expects["mean"]), tuple(expects["std"])), definition.pixels, definition.channels)
    return None if norm is None else [list(values) for values in norm]


def _use_cache(mode: str | bool, augment: bool) -> bool:
    """``teacher.cache``: auto (on when the data are not augmented), true or false."""
    if mode is True and augment:
        raise ConfigError("teacher.cache=true needs an unaugmented teacher view; set data.augment=false or "
                          "teacher.cache=auto")
    return mode is True or (mode == "auto" and not augment)


def _teacher_cache(config: DistillRunConfig, run_dir: str, teacher: FrozenTeacher, modality: str,
                   needs: TeacherNeeds, transform) -> TeacherFeatureCache:
    """Build the cache on rank 0 (the others wait), then open it everywhere."""
    data, teacher_cfg = config.data, config.teacher
    path = teacher_cfg.cache_path or os.path.join(run_dir, run_folder.TEACHER_CACHE)
    view = open_split(data.path, data.split, [modality], [], transform, config.seed)
    options = dict(batch_size=config.train.batch_size, num_workers=data.num_workers,
                   progress=config.train.progress, stage_dtype=teacher_cfg.cache_dtype)
    if runtime.rank() == 0:
        cache = TeacherFeatureCache.build_or_load(path, teacher, view, modality, needs, **options)
    runtime.barrier()
    if runtime.rank() != 0:
        cache = TeacherFeatureCache.build_or_load(path, teacher, view, modality, needs, **options)
    return cache
