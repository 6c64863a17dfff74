"""A training run from a config: the run folder, the process group, seeds, and the verb's builder.

:func:`run_training` is what ``crossmodal train-teacher`` and ``crossmodal distill`` call. It loads the config
into its typed sections, lets the verb's builder check everything else (files, modalities, label sets,
distiller options) before anything trains, creates or reopens the run folder, and hands the builder's
:class:`~crossmodal.engine.TrainSetup` to the :class:`~crossmodal.engine.Trainer`.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable, Optional, Sequence

import torch

from crossmodal import run_folder, runtime
from crossmodal.config import CONFIGS, RESUME_MAY_CHANGE, RunConfig, dump_config
from crossmodal.engine import Hook, Trainer, TrainSetup
from crossmodal.engine.checkpoint import config_differences
from crossmodal.errors import ConfigError
from crossmodal.train.distill_setup import build_distillation
from crossmodal.train.teacher import build_teacher_training

Builder = Callable[[Any, str, torch.device], TrainSetup]
BUILDERS: dict[str, Builder] = {"train-teacher": build_teacher_training, "distill": build_distillation}


def run_training(verb: str, config_path: Optional[str], overrides: Sequence[str] = (), out: Optional[str] = None,
                 resume: Optional[str] = None, hooks: Sequence[Hook] = ()) -> tuple[str, dict[str, Any]]:
    """Train one run of ``verb`` (``train-teacher`` or ``distill``); returns (run folder, last epoch's record).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on GPUs, gloo on CPU)
    and torn down at the end; only rank 0 writes to the run folder.
    """
    owns_group = runtime.init_process_group()
    # restored at the end, so that a caller in the same process keeps its own setting
    deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        config, run_dir = _resolve_run(verb, config_path, overrides, out, resume)
        device = runtime.resolve_device(config.device)
        runtime.seed_everything(config.seed, config.deterministic)
        run_dir, created = run_folder.create(run_dir, claim=not out and resume is None)
        with run_folder.lock(run_dir, verb):
            try:
                setup = BUILDERS[verb](config, run_dir, device)
                setup.hooks.extend(hooks)
                trainer = Trainer(setup)
            except BaseException:
                # A config rejected before training must not leave a run folder behind: the same command,
                # corrected, would then be refused as "already holds a run".
                if created:
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            run_folder.write_config(run_dir, dump_config(config.to_tree()))
            # Training's random stream must not depend on what building drew from it: a teacher cache is built
            # (drawing) on a first start and on rank 0, but only loaded on a restart and on the other ranks.
            # Each rank gets its own stream (its own dropout and drop-path masks), as in timm's seed + rank.
            runtime.seed_random(config.seed + 1 + runtime.rank())
            record = trainer.run(resume=resume is not None)
        return run_dir, record
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
        if owns_group:
            runtime.destroy_process_group()


def _resolve_run(verb: str, config_path: Optional[str], overrides: Sequence[str], out: Optional[str],
                 resume: Optional[str]) -> tuple[RunConfig, str]:
    """The validated config and the run folder (the same on every rank); nothing is written yet."""
    cls = CONFIGS[verb]
    if resume is not None:
        run_dir = os.path.abspath(resume)
        saved_path = run_folder.require_run(run_dir)
        saved = _load_saved_config(verb, saved_path)
        config = cls.load(config_path or saved_path, overrides)
        differences = config_differences(saved.to_tree(), config.to_tree(), RESUME_MAY_CHANGE)
        if differences:
            raise ConfigError(f"--resume {run_dir}: the run was started with another config "
                              f"({len(differences)} difference{'s' if len(differences) > 1 else ''}): "
                              f"{'; '.join(differences)}; only {', '.join(RESUME_MAY_CHANGE)} may change")
    else:
        if config_path is None:
            raise ConfigError("give a config file, or --resume RUN_DIR")
        config = cls.load(config_path, overrides)
        run_dir = os.path.abspath(out) if out else run_folder.default_run_dir(verb, config_path)
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise ConfigError(f"--out {run_dir} is a file, not a folder")
        if out and run_folder.is_run(run_dir):
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                              f"or choose another --out")
    return config, runtime.broadcast_object(run_dir)  # every rank uses rank 0's folder (names hold a time)


def _load_saved_config(verb: str, path: str) -> RunConfig:
    """A run folder's config.yaml; one made by the other verb is named as such, not as a pile of unknown keys."""
    try:
        return CONFIGS[verb].load(path)
    except ConfigError:
        for other, cls in CONFIGS.items():
            if other == verb:
                continue
            try:
                cls.load(path)
            except ConfigError:
                continue
            run_dir = os.path.dirname(path)
            raise ConfigError(f"{run_dir} is a 'crossmodal {other}' run; continue it with "
                              f"crossmodal {other} --resume {run_dir}") from None
        raise
