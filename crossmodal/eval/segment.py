"""Segmentation transfer: train a light decoder over a student encoder, fine-tuned or frozen, and score it.

Each protocol is one run of the training engine (:class:`~crossmodal.engine.Trainer`) on the train split,
from the same initial weights: ``finetune`` trains encoder and decoder, ``frozen`` only the decoder, with the
encoder's parameters fixed and its BatchNorm statistics kept (eval mode). The test split is then scored once,
after the last epoch, from a confusion matrix accumulated over the whole split: pixel accuracy, mean class
accuracy, mIoU over the classes present in the ground truth, and per-class IoU. Nothing is chosen on it.

The output folder's name does not hold a time, so running the same command again finds its protocol folders:
a protocol stopped after a checkpoint (SIGTERM, a full disk, a killed process) continues from it, as
``distill --resume`` does and with the engine's bit-for-bit guarantee, and a finished one is only scored again.
A rerun with other settings is refused, listing each difference by its flag.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from crossmodal import run_folder, runtime
from crossmodal.config import RESUME_MAY_CHANGE, RunConfig, dump_config, read_yaml
from crossmodal.data.dataset import collate
from crossmodal.data.format import LabelInfo, read_layout
from crossmodal.data.setup import for_loader, modality_channels, open_split, transforms
from crossmodal.engine import SupervisedTask, Trainer, TrainSetup
from crossmodal.engine.checkpoint import DamagedCheckpoint, config_differences
from crossmodal.engine.confusion import confusion_matrix, per_class_iou, segmentation_scores
from crossmodal.engine.sampler import check_batch_size
from crossmodal.errors import ConfigError, DataError
from crossmodal.eval.checkpoints import LoadedEncoder, load_encoder, method_name, recorded_seed
from crossmodal.eval.preview_segmentation import confusion_png, write_segmentation_preview
from crossmodal.files import ensure_folder, writable_folder, write_json
from crossmodal.models.config import check_input_channels

FORMAT = "crossmodal-segment/1"
PROTOCOLS = ("finetune", "frozen")
JSON_NAME = run_folder.SEGMENT_JSON
PREVIEW = "preview.png"
PREVIEW_SAMPLES = 4
CONFIG_WHERE = "segment"
# The run config's keys that segment fills from its own flags: an error about one names the flag the user gave.
FLAGS = {"train.batch_size": "--batch-size", "train.epochs": "--epochs", "train.eval_every": "--eval-every",
         "optim.lr": "--lr", "data.size": "--size",
         "data.num_workers": "--num-workers", "data.augment": "--augment", "data.loader": "--loader",
         "data.path": "--data", "data.split": "--train-split", "data.eval_split": "--test-split"}
# The keys of the ``segment`` section of a protocol folder's config.yaml, and the flags that set them (a rerun's
# differences name the flag); "seed" and "device" are not in FLAGS, whose keys are rewritten inside any message.
SETTING_FLAGS = {**FLAGS, "seed": "--seed", "device": "--device", "segment.checkpoint": "--checkpoint",
                 "segment.random_init": "--random-init", "segment.labels": "--labels",
                 "segment.modality": "--modality", "segment.decoder_channels": "--decoder-channels"}
_KEY = re.compile(r"(?<![\w.-])'?(" + "|".join(map(re.escape, FLAGS)) + r")'?(?![\w.])")


@dataclass
class SegmentOptions:
    """What ``crossmodal segment`` is asked to do (the CLI's flags).

    Args:
        checkpoint: a run folder or an exported ``.safetensors`` student.
        data: the paired ``.h5`` file.
        labels: its segmentation label set; None: the file's only one.
        modality: the input modality; default: the student's (required for a bare weights file).
        protocols: ``finetune`` and/or ``frozen``.
        random_init: train the same architecture from random weights (the scratch baseline).
        epochs, lr, batch_size: the training schedule (SGD, cosine, the engine's defaults otherwise).
        size: (height, width) to resize/crop to, or None for the stored size.
        augment: random resized crop and flip (paired with the labels) during training.
        eval_every: epochs between the test split's monitoring scores in the curves (the result is scored once,
            after the last epoch, whatever this is).
        seed: seed of the decoder's and the random encoder's initialisation, data order and augmentation.
        out: the output folder; default beside the checkpoint (see :func:`default_out`).
        json_path: an extra copy of the result JSON.
        num_workers: DataLoader workers.
        loader: ``workers`` (a DataLoader) or ``device`` (the splits held and augmented on the device).
        decoder_channels: width of the segmentation decoder.
        train_split, test_split: the splits to train and score on.
        method: the method name recorded in the JSON; default from the model card.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        progress: tqdm progress bars.
        tensorboard: TensorBoard events in each protocol folder's ``tb/`` (when the package is installed): the
            engine's scalars and config, and the preview and the test confusion matrix as images.
    """

    checkpoint: str
    data: str
    labels: Optional[str] = None
    modality: Optional[str] = None
    protocols: Sequence[str] = PROTOCOLS
    random_init: bool = False
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 16
    size: Optional[Sequence[int]] = None
    augment: bool = True
    eval_every: int = 1
    seed: int = 0
    out: Optional[str] = None
    json_path: Optional[str] = None
    num_workers: int = 0
    loader: str = "workers"
    decoder_channels: int = 64
    train_split: str = "train"
    test_split: str = "test"
    method: Optional[str] = None
    device: str = "auto"
    progress: bool = False
    tensorboard: bool = True


class FrozenEncoderTask(SupervisedTask):
    """:class:`SupervisedTask` whose encoder is fixed: no parameter trains and it stays in eval mode, so that
    the engine's ``train()`` calls leave its BatchNorm statistics (and dropout) as loaded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "FrozenEncoderTask":
        super().train(mode)
        self.encoder.eval()
        return self


def run_segment(options: SegmentOptions) -> dict[str, Any]:
    """Train and score every protocol of ``options``; write the output folder and JSON; return the JSON.

    A protocol folder of ``out`` that holds a checkpoint of the same settings continues from it (a finished
    one is scored again); see the module's docstring.

    Raises:
        DataError: a missing checkpoint or data file, a label set or modality the file does not have.
        ConfigError: a class label set where a segmentation set is needed (or no ``labels`` where the file has
            several), an unknown protocol, a bare weights file without ``--modality``, a modality whose channel
            count does not fit the encoder, a protocol folder holding a run of other settings.

    Examples:
        >>> result = run_segment(SegmentOptions("runs/student", "nyu.h5", "seg13", epochs=30))
        >>> result["results"]["frozen"]["miou"]
    """
    if options.train_split == options.test_split:
        raise ConfigError(f"--train-split and --test-split are both '{options.train_split}': a model scored on "
                          f"the split it was trained on measures nothing")
    unknown = [p for p in options.protocols if p not in PROTOCOLS]
    if unknown or not options.protocols:
        raise ConfigError(f"--protocol: '{(unknown or [''])[0]}' is not one of {', '.join(PROTOCOLS)}, both")
    loaded = load_encoder(options.checkpoint, random_init=options.random_init, seed=options.seed)
    data_path = os.path.abspath(options.data)
    seg_info = segmentation_labels(data_path, options.labels)
    options = dataclasses.replace(options, labels=seg_info.name)
    splits = read_layout(data_path).splits
    for flag, split in (("--train-split", options.train_split), ("--test-split", options.test_split)):
        if split not in splits:
            raise DataError(data_path, f"no split '{split}' ({flag}); it has {sorted(splits)}")
        if not splits[split]:
            raise DataError(data_path, f"split '{split}' ({flag}) is empty")
    modality = options.modality or loaded.modality
    if modality is None:
        raise ConfigError(f"--modality: {loaded.source} is a bare weights file that does not name its modality; "
                          f"give --modality")
    data_cfg = {"path": data_path, "split": options.train_split, "eval_split": options.test_split,
                "size": list(options.size) if options.size else None, "augment": options.augment,
                "num_workers": options.num_workers, "loader": options.loader}
    with flag_names():  # the engine's and the config's messages name config keys; segment's user gave flags
        config = RunConfig.validated({"seed": options.seed, "device": options.device, "data": data_cfg,
                                      "optim": {"lr": options.lr},
                                      "train": {"epochs": options.epochs, "batch_size": options.batch_size,
                                                "eval_every": options.eval_every, "progress": options.progress,
                                                "tensorboard": options.tensorboard}},
                                     CONFIG_WHERE)
        check_batch_size(config.train.batch_size, splits[options.train_split])  # before anything is written
    runtime.resolve_device(config.device)  # a wrong device is refused before anything is written
    channels = modality_channels(data_path, {"--modality": modality})["--modality"]
    check_input_channels("--modality", modality, channels, loaded.encoder.in_chans,
                         f"the encoder of {loaded.source}")
    out = os.path.abspath(options.out or default_out(loaded, options))
    result = {"format": FORMAT, "checkpoint": loaded.source, "random_init": options.random_init,
              "method": options.method or method_name(loaded.card, options.random_init),
              "seed": recorded_seed(loaded.card, options.random_init, options.seed), "modality": modality,
              "data": data_path, "labels": options.labels, "train_split": options.train_split, "test_split": options.test_split,
              "epochs": options.epochs, "results": {}}
    settings = {protocol: {**config.to_tree(), "segment": {
        "checkpoint": loaded.source, "random_init": options.random_init, "labels": options.labels,
        "modality": modality, "protocol": protocol, "decoder_channels": options.decoder_channels}}
        for protocol in options.protocols}
    for protocol, tree in settings.items():
        check_same_settings(os.path.join(out, protocol), tree)
    if options.json_path:  # a folder that cannot take the copy is refused now, not after the training
        writable_folder(os.path.dirname(os.path.abspath(options.json_path)))
    ensure_folder(out)
    with run_folder.lock(out, "segment"), flag_names():  # a second `segment --out` is refused, not raced
        for protocol in options.protocols:
            result["results"][protocol] = run_protocol(protocol, loaded, modality, seg_info, config,
                                                       os.path.join(out, protocol), options, settings[protocol])
        for path in [os.path.join(out, JSON_NAME)] + ([options.json_path] if options.json_path else []):
            write_json(path, result)
    return result


@contextlib.contextmanager
def flag_names() -> Iterator[None]:
    """Re-raise a ConfigError or DataError whose message names a config key of :data:`FLAGS` with the flag
    instead (``train.batch_size 64 x 1 process(es) exceeds ...`` -> ``--batch-size 64 x 1 process(es) ...``);
    the engine's messages stay as they are for the config-driven verbs."""
    try:
        yield
    except ConfigError as err:
        message = flag_message(str(err))
        if message == str(err):
            raise
        raise ConfigError(message) from err
    except DataError as err:
        problem = flag_message(err.problem)
        if problem == err.problem:
            raise
        raise DataError(err.path, problem) from err


def flag_message(message: str) -> str:
    """``message`` with the config keys segment sets from its flags replaced by those flags.

    Examples:
        >>> flag_message("segment: 'optim.lr' must be a positive number, got -1.0")
        '--lr must be a positive number, got -1.0'
    """
    translated = _KEY.sub(lambda match: FLAGS[match.group(1)], message)
    if translated != message and translated.startswith(f"{CONFIG_WHERE}: "):  # the config's "where" prefix
        translated = translated[len(CONFIG_WHERE) + 2:]
    return translated


def check_same_settings(run_dir: str, settings: Mapping[str, Any]) -> None:
    """Refuse to continue the run in ``run_dir`` (a protocol folder holding a checkpoint) with other settings
    than it was started with, listing every difference by its flag; settings that a resumed training run may
    change (``--device``, ``--num-workers``) are not differences."""
    if not (run_folder.has_checkpoint(run_dir) and run_folder.is_run(run_dir)):
        return  # nothing to continue: the protocol starts (over)
    differences = config_differences(read_yaml(run_folder.config_path(run_dir)), settings, RESUME_MAY_CHANGE)
    if differences:
        shown = []
        for difference in differences:
            key, change = difference.split(": ", 1)
            shown.append(f"{SETTING_FLAGS.get(key, key)} {change}")
        raise ConfigError(f"--out: {run_dir} holds a run started with other settings ({len(shown)} difference"
                          f"{'s' if len(shown) > 1 else ''}: {'; '.join(shown)}); run the command with its "
                          f"settings to continue it, or choose another --out")


def segmentation_labels(data_path: str, labels: Optional[str]) -> LabelInfo:
    """The layout of label set ``labels`` in ``data_path``, which must be a segmentation set; None: the file's
    only segmentation label set."""
    layout = read_layout(data_path)
    segmentation = [name for name, info in layout.labels.items() if info.type == "segmentation"]
    offered = f"its segmentation label sets: {', '.join(segmentation) or 'none'}"
    if labels is None:
        if not segmentation:  # no --labels can help: say what the file has
            raise ConfigError(f"--labels: {data_path} has no segmentation label set, which segment needs (its "
                              f"label sets: {', '.join(layout.labels) or 'none'})")
        if len(segmentation) > 1:
            raise ConfigError(f"--labels: {data_path} has several segmentation label sets "
                              f"({', '.join(segmentation)}); choose one with --labels")
        labels = segmentation[0]
    info = layout.labels.get(labels)
    if info is None:
        raise DataError(data_path, f"no label set '{labels}' (--labels); {offered}")
    if info.type != "segmentation":
        raise ConfigError(f"--labels: '{labels}' in {data_path} is a {info.type} label set, not a segmentation "
                          f"one; {offered}")
    return info


def run_protocol(protocol: str, loaded: LoadedEncoder, modality: str, seg_info: LabelInfo,
                 config: RunConfig, run_dir: str, options: SegmentOptions,
                 settings: Mapping[str, Any]) -> dict[str, Any]:
    """One protocol's training run in ``run_dir`` (continued when the folder holds a start of it; ``settings``
    is its config.yaml), its test scores and its preview; returns its JSON entry."""
    started = run_folder.is_run(run_dir)
    ensure_folder(run_dir)
    device = runtime.resolve_device(config.device)
    train_transform, eval_transform = transforms(config.data)
    data = config.data
    train = open_split(data.path, data.split, [modality], [options.labels], train_transform, config.seed,
                       setting="--train-split")
    test = open_split(data.path, data.eval_split, [modality], [options.labels], eval_transform, config.seed,
                      setting="--test-split")
    torch.manual_seed(config.seed)  # the same decoder initialisation for every protocol
    ignore_index = seg_info.ignore_index if seg_info.ignore_index is not None else -1
    task_class = FrozenEncoderTask if protocol == "frozen" else SupervisedTask
    task = task_class(copy.deepcopy(loaded.encoder), modality, segmentation=options.labels,
                      num_segmentation_classes=seg_info.num_classes, ignore_index=ignore_index,
                      decoder_channels=options.decoder_channels)
    trainer = Trainer(TrainSetup("segment", config, run_dir, task, for_loader(train, data.loader, device),
                                 for_loader(test, data.loader, device), device))
    run_folder.write_config(run_dir, dump_config(settings))
    print(f"segment: {protocol} on {modality} -> {options.labels}, {len(train)} training samples", flush=True)
    try:
        trainer.run(resume=started)
    except DamagedCheckpoint as err:  # the same command would meet it again: say how to train this one afresh
        raise DataError(err.path, f"damaged: {err.damage}; restore an intact copy, or remove {run_dir} and run the "
                                  f"same command again to train {protocol} afresh") from None
    confusion, samples = evaluate(task, test, config, device)
    names = seg_info.class_names
    scores = {key: _finite(value) for key, value in segmentation_scores(confusion).items()}
    preview = os.path.join(run_dir, PREVIEW)
    title = f"{options.labels}, {protocol}{' (scratch)' if options.random_init else ''}"
    method = options.method or method_name(loaded.card, options.random_init)
    write_segmentation_preview(preview, *samples, num_classes=seg_info.num_classes, ignore_index=ignore_index,
                               title=title, class_names=seg_info.class_names, modality=modality, method=method)
    if trainer.metrics.events is not None:  # the pictures in TensorBoard too, at the last step
        with open(preview, "rb") as handle:
            trainer.metrics.image("preview", handle.read(), trainer.step)
        trainer.metrics.image("confusion", confusion_png(confusion, names, f"{method}: {title}, test split"),
                              trainer.step)
    return {**scores, "per_class_iou": dict(zip(names, per_class_iou(confusion))), "preview": preview}


@torch.no_grad()
def evaluate(task: SupervisedTask, test: Iterable[Mapping[str, Any]], config: RunConfig,
             device: torch.device) -> tuple[torch.Tensor, tuple[list, list, list]]:
    """The confusion matrix over the whole test split, and (inputs, truths, predictions) of its first few
    samples for the preview."""
    task.eval()
    head = task.head
    confusion = torch.zeros(head.num_classes, head.num_classes, dtype=torch.long)
    images: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    predictions: list[np.ndarray] = []
    loader = DataLoader(test, batch_size=config.train.batch_size, shuffle=False,
                        num_workers=config.data.num_workers, collate_fn=collate)
    for batch in loader:
        image, target = batch[task.modality].to(device), batch[task.segmentation]
        predicted = head(task.encoder(image).features, image.shape[-2:]).argmax(1).cpu()
        confusion += confusion_matrix(predicted, target, head.num_classes, task.ignore_index)
        for index in range(min(PREVIEW_SAMPLES - len(images), len(predicted))):
            images.append(image[index].cpu().numpy())
            truths.append(target[index].numpy())
            predictions.append(predicted[index].numpy())
    return confusion, (images, truths, predictions)


def default_out(loaded: LoadedEncoder, options: SegmentOptions) -> str:
    """``RUN/segment-LABELS-PROTOCOL[-scratch]`` inside a run folder, ``STEM-segment-...`` beside a file."""
    protocol = options.protocols[0] if len(options.protocols) == 1 else "both"
    name = f"segment-{options.labels}-{protocol}{'-scratch' if options.random_init else ''}"
    if os.path.isdir(loaded.source):
        return os.path.join(loaded.source, name)
    stem = os.path.splitext(os.path.basename(loaded.source))[0]
    return os.path.join(os.path.dirname(loaded.source), f"{stem}-{name}")


def format_table(result: Mapping[str, Any]) -> str:
    """The results as a short text table, one row per protocol, in percent with one decimal like the probe's and
    the report's tables (the JSON keeps fractions)."""
    lines = [f"segment {result['labels']} on {result['modality']}, method {result['method']}, seed {result['seed']}"
             f", {result['epochs']} epoch(s), scored on '{result['test_split']}'",
             f"{'protocol':<10}{'pixel_acc':>11}{'mean_class_acc':>16}{'miou':>8}"]
    for protocol, scores in result["results"].items():
        lines.append(f"{protocol:<10}{_show(scores['pixel_acc']):>11}{_show(scores['mean_class_acc']):>16}"
                     f"{_show(scores['miou']):>8}")
    return "\n".join(lines)


def _finite(value: float) -> Optional[float]:
    return None if value != value else value  # NaN (an empty test split) -> null, valid JSON


def _show(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"

