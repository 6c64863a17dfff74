"""``crossmodal train-teacher CFG`` and ``crossmodal distill CFG``: config-driven, resumable training runs."""
from __future__ import annotations

import argparse
import os
import re
from typing import Sequence

from crossmodal.cli.config_verb import config_argument

EPILOG = """Overrides: any config key as key.sub=value after the config, read as YAML
(optim.lr=0.01 distill.name=crd 'data.size=[64, 64]' teacher.weights=null).
--out RUN_DIR chooses the run folder (default: runs/VERB-CONFIG-TIME); --resume RUN_DIR continues a killed
or finished run from its last checkpoint (its config.yaml is used; only device, data.num_workers and the
train.progress/log_every/checkpoint_every_steps keys may be overridden).
Multi-process: torchrun --nproc_per_node=N -m crossmodal VERB CFG (train.batch_size is per process;
optim.lr is used as given)."""


def register(verbs: argparse._SubParsersAction) -> None:
    teacher = verbs.add_parser(
        "train-teacher", help="train a modality-A teacher on a data set's labels",
        description="Supervised training of an encoder on one modality with image-level and/or segmentation "
                    "labels; writes RUN_DIR/teacher.safetensors and a model card.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(teacher)
    teacher.set_defaults(handler=_run, verb="train-teacher", list_distillers=False)

    distill = verbs.add_parser(
        "distill", help="distil a modality-A teacher into a modality-B student",
        description="Train a modality-B student from a frozen modality-A teacher: loss = loss.ce x CE + "
                    "loss.kd x KD + the weighted distillers of distill.name (crd, at, ...). Writes "
                    "RUN_DIR/student.safetensors (loadable by timm) and a model card.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(distill)
    distill.add_argument("--list-distillers", action="store_true", help="print the registered distillers, one line each")
    distill.set_defaults(handler=_run, verb="distill")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CFG",
                        help="YAML config (experiments/configs/*.yaml), or the name of a shipped one (crossmodal "
                             "config list)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder to create")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    parser.set_defaults(parser=parser)


def _run(args: argparse.Namespace) -> int:
    if args.list_distillers:
        from crossmodal.distill import list_distillers
        from crossmodal.distill.registry import description

        names = list_distillers()
        width = max(len(name) for name in names)
        print("\n".join(f"{name:<{width}}  {description(name)}" for name in names))
        return 0
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):  # `--resume RUN key=value`
        config, overrides = None, [config] + overrides
    config = config_argument(config)
    for word, following in zip(overrides, overrides[1:]):  # `CFG train.epochs 1 --out R`: argparse took both
        if "=" not in word and override_hint([word, following]):
            args.parser.error(f"override '{word}' is not of the form key.sub=value{override_hint([word, following])}")
    if args.resume and args.out:
        args.parser.error("give either --out (a new run) or --resume (an existing one), not both")
    if config is None and not args.resume:
        args.parser.error("give a config file (or --resume RUN_DIR)")
    from crossmodal.train.run import run_training

    run_dir, _ = run_training(args.verb, config, overrides, out=args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, once
        print(f"run folder: {run_dir}")
    return 0


def override_hint(extra: Sequence[str]) -> str:
    """For arguments argparse did not take: ``train.epochs 1`` (an override split at its ``=``) gets
    ``; a config override is one word, key=value: train.epochs=1``, else nothing."""
    words = list(extra)
    for key, value in zip(words, words[1:]):
        if re.fullmatch(r"[A-Za-z_][\w]*(\.[\w+-]+)*", key) and not value.startswith("-") and "=" not in value:
            return f"; a config override is one word, key=value: {key}={value}"
    return ""
