"""Linear and kNN probes of a frozen encoder, per stage: the work behind ``crossmodal probe``.

Every choice (C, k, T) is made on a stratified holdout of the train split; the chosen probe is refitted on the
whole train split and scored once on the test split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from crossmodal.errors import ConfigError, DataError

FORMAT = "crossmodal-probe/1"


@dataclass
class ProbeOptions:
    """What ``crossmodal probe`` is asked to do (the CLI's flags; see ``crossmodal probe --help``).

    Args:
        checkpoint: a run folder of train-teacher / distill, or an exported ``.safetensors`` file.
        data: the paired ``.h5`` file.
        modality: the input modality; default: the checkpoint's.
        labels: the class label set; default: the file's only one.
        stages: stage indices to probe (negatives from the end), None for all, empty for none; the embedding is
            always probed.
        random_init: probe the same architecture randomly initialised (seeded by ``seed``).
        seed: seed of the holdout draw and of ``random_init``.
        method: the method name written to the result; default from the model card.
        pool, pooled_size: adaptive pooling kind and fixed side (None: per stage, at most ~8192 values).
        solver: ``auto``, ``sklearn`` or ``torch``.
        holdout_fraction: the stratified part of the train split that chooses hyper-parameters.
        train_split, test_split: the splits fitted and scored.
        batch_size, num_workers, device: feature extraction.
    """

    checkpoint: str
    data: str
    modality: Optional[str] = None
    labels: Optional[str] = None
    stages: Optional[Sequence[int]] = None
    random_init: bool = False
    seed: int = 0
    method: Optional[str] = None
    pool: str = "avg"
    pooled_size: Optional[int] = None
    solver: str = "auto"
    holdout_fraction: float = 0.2
    train_split: str = "train"
    test_split: str = "test"
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"


def _class_label_set(layout, requested: Optional[str], path: str) -> str:
    class_sets = sorted(name for name, info in layout.labels.items() if info.type == "class")
    if requested is not None:
        if requested not in class_sets:
            raise DataError(path, f"no class label set '{requested}'; it has {class_sets or 'none'}"
                                  + (f" (segmentation: {sorted(set(layout.labels) - set(class_sets))})"
                                     if set(layout.labels) - set(class_sets) else ""))
        return requested
    if len(class_sets) == 1:
        return class_sets[0]
    if not class_sets:
        raise DataError(path, f"no class label set to probe; it has {sorted(layout.labels) or 'no labels'}")
    raise ConfigError(f"--labels: {path} has several class label sets {class_sets}; name one")


def run_probe(args: ProbeOptions, json_path: Optional[str] = None) -> dict[str, Any]:
    """Probe ``args.checkpoint`` and return the ``crossmodal-probe/1`` result (also written to ``json_path``).

    Raises:
        ConfigError, DataError: one line naming the problem, before any feature is extracted.
    """
    from torch.utils.data import DataLoader

    from crossmodal.data import PairedDataset
    from crossmodal.data.format import read_layout
    from crossmodal.data.modalities import resolve_modality
    from crossmodal.eval.checkpoints import load_encoder, method_name, recorded_seed
    from crossmodal.eval.features import extract_features, select_stages
    from crossmodal.eval.knn import knn_probe
    from crossmodal.eval.probe import linear_probe
    from crossmodal.files import ensure_folder, write_json
    from crossmodal.train.run import resolve_device

    if not 0 < args.holdout_fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.train_split == args.test_split:
        raise ConfigError(f"--train-split and --test-split are both '{args.train_split}': a probe scored on the "
                          f"split it was fitted on measures nothing")
    device = resolve_device(args.device)
    if json_path:
        ensure_folder(os.path.dirname(os.path.abspath(json_path)))
    loaded = load_encoder(args.checkpoint, random_init=args.random_init, seed=args.seed)
    modality = args.modality or loaded.modality
    if modality is None:
        raise ConfigError(f"--modality: {loaded.source} does not say which modality it encodes; name it")
    data_path = os.path.abspath(args.data)
    layout = read_layout(data_path)
    try:
        channels = resolve_modality(modality, layout).channels
    except KeyError as err:
        raise DataError(data_path, err.args[0]) from None
    if channels != loaded.encoder.in_chans:
        raise ConfigError(f"--modality {modality} has {channels} channels, the encoder of {loaded.source} "
                          f"takes {loaded.encoder.in_chans} (trained on {loaded.modality or 'an unknown modality'})")
    label_name = _class_label_set(layout, args.labels, data_path)
    stages = select_stages(len(loaded.encoder.spec.channels), args.stages)

    def features(split: str):
        dataset = PairedDataset(data_path, split, modalities=[modality], labels=[label_name])
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        return extract_features(loaded.encoder, loader, modality, label_name, stages, args.pool,
                                args.pooled_size, device=device)

    train, test = features(args.train_split), features(args.test_split)
    train_classes = sorted(set(train.labels.tolist()))
    if len(train_classes) < 2:
        raise DataError(data_path, f"label set '{label_name}' has {len(train_classes)} class(es) among the labelled "
                                   f"samples of split '{args.train_split}'; a probe needs at least 2")
    if len(test.labels) == 0:
        raise DataError(data_path, f"split '{args.test_split}' has no samples labelled in '{label_name}'")

    rows = []
    for train_stage, test_stage in zip(train.stages, test.stages):
        options = dict(holdout_fraction=args.holdout_fraction, seed=args.seed)
        linear = linear_probe(train_stage.values, train.labels, test_stage.values, test.labels,
                              solver=args.solver, **options)
        knn = knn_probe(train_stage.values, train.labels, test_stage.values, test.labels, **options)
        rows.append({"stage": train_stage.name, "pool": args.pool, "pooled_size": train_stage.pooled_size,
                     "dim": train_stage.dim, "linear": linear.as_dict(), "knn": knn.as_dict()})
    card = loaded.card
    counts = [int((test.labels == value).sum()) for value in set(test.labels.tolist())]
    result = {
        "format": FORMAT, "checkpoint": loaded.source, "random_init": bool(args.random_init),
        "method": args.method or method_name(card, args.random_init),
        "seed": recorded_seed(card, args.random_init, args.seed),
        "modality": modality, "data": data_path, "labels": label_name,
        "train_split": args.train_split, "test_split": args.test_split, "holdout_fraction": args.holdout_fraction,
        "num_train": int(len(train.labels)), "num_test": int(len(test.labels)), "num_classes": len(train_classes),
        "chance": max(counts) / len(test.labels), "stages": rows}
    if json_path:
        write_json(json_path, result)
    return result


def render_table(result: dict[str, Any]) -> str:
    """The probe results as a plain-text table, one row per stage."""
    head = (f"probe of {result['checkpoint']} ({result['method']}, {result['modality']}) on {result['data']}: "
            f"'{result['labels']}', {result['num_classes']} classes, {result['num_train']} train / "
            f"{result['num_test']} test samples, chance {100 * result['chance']:.1f}%")
    lines = [head, f"{'stage':>9}  {'dim':>6}  {'linear':>7}  {'kNN':>7}  chosen (on a train holdout)"]
    for row in result["stages"]:
        linear, knn = row["linear"], row["knn"]
        chosen = ", ".join(f"{key}={value:g}" for key, value in linear["chosen"].items())
        lines.append(f"{row['stage']:>9}  {row['dim']:>6}  {100 * linear['top1']:6.1f}%  {100 * knn['top1']:6.1f}%  "
                     f"{linear['solver']}: {chosen}; kNN: k={knn['chosen']['k']}, "
                     f"T={knn['chosen']['temperature']:g}")
    return "\n".join(lines)
