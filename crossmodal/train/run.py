"""A training run from a config: the run folder, the process group, seeds, and everything a verb shares.

:func:`run_training` is what ``crossmodal train-teacher`` and ``crossmodal distill`` call. It validates the
config completely (keys, types, files, modalities, label sets, distiller options) before anything trains,
creates or reopens the run folder, and hands the verb's :class:`~crossmodal.train.engine.TrainSetup` to the
:class:`~crossmodal.train.engine.Trainer`.
"""
from __future__ import annotations

import datetime
import os
import random
import shutil
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from crossmodal import distributed
from crossmodal.data.dataset import PairedDataset
from crossmodal.data.format import read_layout
from crossmodal.data.modalities import resolve_modality
from crossmodal.data.transforms import PairedTransform
from crossmodal.errors import ConfigError, DataError
from crossmodal.files import atomic_output
from crossmodal.train.checkpoint import config_differences
from crossmodal.train.config import dump_config, load_config
from crossmodal.train.engine import Hook, Trainer, TrainSetup
from crossmodal.train.schemas import RESUME_MAY_CHANGE, SCHEMAS

CONFIG_NAME = "config.yaml"
RUNS_ROOT = "runs"
GENERATE_OPTIONS = {"num", "size", "seed", "test_fraction", "noise", "workers"}

Builder = Callable[[Mapping[str, Any], str, torch.device], TrainSetup]


def run_training(verb: str, build: Builder, config_path: Optional[str], overrides: Sequence[str] = (),
                 out: Optional[str] = None, resume: Optional[str] = None,
                 hooks: Sequence[Hook] = ()) -> tuple[str, dict[str, Any]]:
    """Train one run of ``verb``; returns (run folder, last epoch's record).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on GPUs, gloo on CPU)
    and torn down at the end; only rank 0 writes to the run folder.
    """
    owns_group = _init_distributed()
    # restored at the end, so that a caller in the same process keeps its own setting
    deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        config, run_dir = _resolve_run(verb, config_path, overrides, out, resume)
        device = resolve_device(config["device"])
        _seed_everything(config["seed"], config["deterministic"])
        run_dir, created = _make_run_dir(run_dir, claim=not out and resume is None)
        try:
            setup = build(config, run_dir, device)
            setup.hooks.extend(hooks)
            trainer = Trainer(setup)
        except BaseException:
            # A config rejected before training must not leave a run folder behind: the same command,
            # corrected, would then be refused as "already holds a run".
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        write_config(config, run_dir)
        # Training's random stream must not depend on what building drew from it: a teacher cache is built
        # (drawing) on a first start and on rank 0, but only loaded on a restart and on the other ranks. Each
        # rank gets its own stream (its own dropout and drop-path masks), as in timm's seed + rank.
        _seed_random(config["seed"] + 1 + distributed.rank())
        record = trainer.run(resume=resume is not None)
        return run_dir, record
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _resolve_run(verb: str, config_path: Optional[str], overrides: Sequence[str], out: Optional[str],
                 resume: Optional[str]) -> tuple[dict[str, Any], str]:
    """The validated config and the run folder (the same on every rank); nothing is written yet."""
    schema = SCHEMAS[verb]
    if resume is not None:
        run_dir = os.path.abspath(resume)
        saved_path = os.path.join(run_dir, CONFIG_NAME)
        if not os.path.isfile(saved_path):
            raise ConfigError(f"{run_dir}: not a run folder (it has no {CONFIG_NAME})")
        saved = _load_saved_config(verb, saved_path)
        config = load_config(config_path or saved_path, schema, overrides)
        differences = config_differences(saved, config, RESUME_MAY_CHANGE)
        if differences:
            raise ConfigError(f"--resume {run_dir}: the run was started with another config: "
                              f"{'; '.join(differences[:3])}; only {', '.join(RESUME_MAY_CHANGE)} may change")
    else:
        if config_path is None:
            raise ConfigError("give a config file, or --resume RUN_DIR")
        config = load_config(config_path, schema, overrides)
        run_dir = os.path.abspath(out) if out else _default_run_dir(verb, config_path)
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise ConfigError(f"--out {run_dir} is a file, not a folder")
        if out and os.path.exists(os.path.join(run_dir, CONFIG_NAME)):
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                              f"or choose another --out")
    if distributed.is_distributed():  # every rank must use rank 0's folder (default names hold a time stamp)
        holder = [run_dir]
        dist.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    return config, run_dir


def _load_saved_config(verb: str, path: str) -> dict[str, Any]:
    """A run folder's config.yaml; one made by the other verb is named as such, not as a pile of unknown keys."""
    try:
        return load_config(path, SCHEMAS[verb])
    except ConfigError:
        for other, schema in SCHEMAS.items():
            if other == verb:
                continue
            try:
                load_config(path, schema)
            except ConfigError:
                continue
            run_dir = os.path.dirname(path)
            raise ConfigError(f"{run_dir} is a 'crossmodal {other}' run; continue it with "
                              f"crossmodal {other} --resume {run_dir}") from None
        raise


def _make_run_dir(run_dir: str, claim: bool = False) -> tuple[str, bool]:
    """Create the run folder on rank 0; (the folder, whether this call created it).

    With ``claim`` (a default name) the folder is claimed atomically: runs of one config started in the same
    second (a sweep) get ``NAME-2``, ``NAME-3`` ... instead of training into one folder together.
    """
    created = False
    if distributed.rank() == 0 and claim:
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        base, number = run_dir, 1
        while True:
            try:
                os.mkdir(run_dir)
                break
            except FileExistsError:
                number += 1
                run_dir = f"{base}-{number}"
        created = True
    elif distributed.rank() == 0 and not os.path.isdir(run_dir):
        os.makedirs(run_dir)
        created = True
    if claim and distributed.is_distributed():
        holder = [run_dir]
        dist.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    return run_dir, created


def write_config(config: Mapping[str, Any], run_dir: str) -> None:
    """RUN_DIR/config.yaml, on rank 0, once the builder has accepted the config: it marks the folder a run."""
    if distributed.rank() == 0:
        with atomic_output(os.path.join(run_dir, CONFIG_NAME)) as temporary:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(dump_config(config))


def _default_run_dir(verb: str, config_path: str) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(RUNS_ROOT, f"{verb}-{stem}-{stamp}"))


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def _seed_random(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}': CUDA is not available on this machine")
    return device


def _seed_everything(seed: int, deterministic: bool) -> None:
    _seed_random(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


# ------------------------------------------------------------------------------------------------ shared builders
def ensure_data(data: Mapping[str, Any]) -> None:
    """Generate the synthetic data file when it is absent and ``data.generate`` asks for it (rank 0; the
    others wait); a missing file otherwise is a one-line error."""
    path = data["path"]
    options = dict(data["generate"] or {})
    unknown = sorted(set(options) - GENERATE_OPTIONS)
    if unknown:
        raise ConfigError(f"data.generate: unknown option '{unknown[0]}'; options: "
                          f"{', '.join(sorted(GENERATE_OPTIONS))}")
    if not os.path.exists(path) and data["generate"] is not None:
        if distributed.rank() == 0:
            from data_prep.synthetic import generate
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            print(f"generating the synthetic data set {path}", file=sys.stderr)
            generate(path, **options)
        if distributed.is_distributed():
            dist.barrier()
    if not os.path.exists(path):
        raise DataError(path, "no such data file (data.path)")


def check_batch_size(batch_size: int, num_samples: int) -> None:
    """Every process needs at least one full batch per epoch; checked before any expensive set-up."""
    world = distributed.world_size()
    if -(-num_samples // world) < batch_size:
        raise ConfigError(f"train.batch_size {batch_size} x {world} process(es) exceeds the {num_samples} "
                          f"training samples; lower it")


def transforms(data: Mapping[str, Any]) -> tuple[Optional[PairedTransform], Optional[PairedTransform]]:
    """(training transform, evaluation transform) for the ``data`` section."""
    size = tuple(data["size"]) if data["size"] is not None else None
    if size is not None and len(size) != 2:
        raise ConfigError(f"data.size must be [height, width], got {list(size)}")
    scale = data["scale"]
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"data.scale must be [low, high] with 0 < low <= high <= 1, got {scale}")
    evaluation = PairedTransform(size=size, train=False) if size is not None else None
    if data["augment"]:
        return PairedTransform(size=size, train=True, scale=tuple(scale), color_jitter=data["color_jitter"]), evaluation
    return evaluation, evaluation


def open_dataset(data: Mapping[str, Any], split: str, modalities: Sequence[str], labels: Sequence[str],
                 transform: Optional[PairedTransform], seed: int) -> PairedDataset:
    dataset = PairedDataset(data["path"], split, modalities=list(dict.fromkeys(modalities)),
                            labels=[name for name in dict.fromkeys(labels) if name], transform=transform, seed=seed)
    if len(dataset) == 0:
        raise DataError(data["path"], f"split '{split}' is empty")
    return dataset


def encoder_config(encoder: Mapping[str, Any], channels: int, section: str,
                   num_classes: Optional[int] = None) -> dict[str, Any]:
    """The encoder mapping with ``in_chans`` (and ``num_classes``) filled in from the data, checked."""
    config = dict(encoder)
    if "weights" in config:
        raise ConfigError(f"{section}.encoder.weights: give the weights as {section}.weights")
    if "name" not in config:
        raise ConfigError(f"{section}.encoder lacks 'name' (a timm model name)")
    config.setdefault("in_chans", channels)
    if config["in_chans"] != channels:
        raise ConfigError(f"{section}.encoder.in_chans is {config['in_chans']} but the modality has {channels} "
                          f"channels")
    if num_classes is not None:
        config.setdefault("num_classes", num_classes)
        if config["num_classes"] != num_classes:
            raise ConfigError(f"{section}.encoder.num_classes is {config['num_classes']} but the labels have "
                              f"{num_classes} classes")
    return config


def modality_channels_in(data: Mapping[str, Any], modalities: Mapping[str, str]) -> dict[str, int]:
    """The channel count of each configured modality (by config key), from the file's layout alone; a modality
    the file can neither read nor derive is a one-line error naming the key."""
    layout = read_layout(data["path"])
    channels = {}
    for key, name in modalities.items():
        try:
            channels[key] = resolve_modality(name, layout).channels
        except KeyError as err:
            raise DataError(data["path"], f"{key}: {err.args[0]}") from None
    return channels


def modality_channels(dataset: PairedDataset, name: str) -> int:
    return next(m.channels for m in dataset.modalities if m.name == name)
