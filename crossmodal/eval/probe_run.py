"""Linear and kNN probes of a frozen encoder, per stage: the work behind ``crossmodal probe``.

Every choice (C, k, T) is made on a stratified holdout of the train split; the chosen probe is refitted on the
whole train split and scored once on the test split.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

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
        classes: probe these classes of ``labels`` only (names or ids), None for all; the features are
            extracted (and cached) for the whole split either way.
        stages: stage indices to probe (negatives from the end), None for all, empty for none; the embedding is
            always probed.
        random_init: probe the same architecture randomly initialised (seeded by ``seed``).
        seed: seed of the holdout draw and of ``random_init``.
        method: the method name written to the result; default from the model card.
        pool, pooled_size: adaptive pooling kind and fixed side (None: per stage, at most ~8192 values).
        solver: ``torch`` (L-BFGS on ``device``, a wide C search) or ``sklearn`` (the reference).
        holdout_fraction: the stratified part of the train split that chooses hyper-parameters.
        train_split, test_split: the splits fitted and scored.
        batch_size, num_workers: feature extraction.
        device: where the encoder runs, the features stay and the torch solver and kNN work.
        feature_cache: a folder for the extracted features (reused while valid), or None.
        progress: a progress bar (or, in a pipe, lines) over feature extraction.
    """

    checkpoint: str
    data: str
    modality: Optional[str] = None
    labels: Optional[str] = None
    classes: Optional[Sequence[str]] = None
    stages: Optional[Sequence[int]] = None
    random_init: bool = False
    seed: int = 0
    method: Optional[str] = None
    pool: str = "avg"
    pooled_size: Optional[int] = None
    solver: str = "torch"
    holdout_fraction: float = 0.2
    train_split: str = "train"
    test_split: str = "test"
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    feature_cache: Optional[str] = None
    progress: bool = True


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def run_probe(args: ProbeOptions, json_path: Optional[str] = None, say: Callable[[str], None] = _stderr,
              show: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Probe ``args.checkpoint`` and return the ``crossmodal-probe/1`` result (also written to ``json_path``).

    ``say`` receives a line per stage as it finishes (and the feature cache's lines); a fit that stopped at its
    iteration cap is one line on stderr and ``converged: false`` in the result. ``show`` receives the result
    before the JSON is written, so that a write refused at the end (a disk filled meanwhile) loses no table.

    Raises:
        ConfigError, DataError: one line naming the problem; those about the options and files come before any
        feature is extracted, and nothing is written.
    """
    from torch.utils.data import DataLoader

    from crossmodal.data import PairedDataset
    from crossmodal.data.classes import class_names, require_classes, resolve_classes
    from crossmodal.data.dataset import collate
    from crossmodal.data.format import read_layout
    from crossmodal.eval import feature_cache
    from crossmodal.eval.checkpoints import load_encoder, method_name, recorded_seed
    from crossmodal.eval.features import (DEFAULT_MAX_DIM, extract_features, merge_equal_stages,
                                          restrict_classes, select_stages)
    from crossmodal.eval.knn import knn_probe
    from crossmodal.eval.probe import SOLVERS, linear_probe
    from crossmodal.data.setup import modality_channels
    from crossmodal.files import writable_folder, write_json
    from crossmodal.models.config import check_input_channels
    from crossmodal.runtime import resolve_device

    if not 0 < args.holdout_fraction < 1:
        raise ConfigError(f"--holdout-fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.solver not in SOLVERS:
        raise ConfigError(f"--solver must be one of {list(SOLVERS)}, got '{args.solver}'")
    if args.train_split == args.test_split:
        raise ConfigError(f"--train-split and --test-split are both '{args.train_split}': a probe scored on the "
                          f"split it was fitted on measures nothing")
    device = resolve_device(args.device)
    if json_path:
        writable_folder(os.path.dirname(os.path.abspath(json_path)))
    loaded = load_encoder(args.checkpoint, random_init=args.random_init, seed=args.seed)
    modality = args.modality or loaded.modality
    if modality is None:
        raise ConfigError(f"--modality: {loaded.source} does not say which modality it encodes; name it")
    data_path = os.path.abspath(args.data)
    layout = read_layout(data_path)
    channels = modality_channels(data_path, {"--modality": modality})["--modality"]
    check_input_channels("--modality", modality, channels, loaded.encoder.in_chans,
                         f"the encoder of {loaded.source} (trained on {loaded.modality or 'an unknown modality'})")
    label_name = _class_label_set(layout, args.labels, data_path)
    subset = None
    if args.classes is not None:
        subset = resolve_classes(layout.labels[label_name], args.classes, "--classes")
    stages = select_stages(len(loaded.encoder.spec.channels), args.stages)
    datasets = {split: PairedDataset(data_path, split, modalities=[modality], labels=[label_name])
                for split in (args.train_split, args.test_split)}
    if args.feature_cache:
        writable_folder(args.feature_cache)
    fingerprint = loaded.encoder.fingerprint() if args.feature_cache else ""

    def features(split: str):
        dataset = datasets[split]

        def extract():
            loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                                collate_fn=collate)
            return extract_features(loaded.encoder, loader, modality, label_name, stages, args.pool,
                                    args.pooled_size, device=device,
                                    progress=f"features {split}" if args.progress else None)

        if not args.feature_cache:
            return extract()
        parts = feature_cache.key_parts(fingerprint, data_path, split, dataset.rows, modality, label_name, stages,
                                        args.pool, args.pooled_size, DEFAULT_MAX_DIM)
        path = feature_cache.cache_path(args.feature_cache, split, modality, label_name, args.pool)
        return feature_cache.cached(path, parts, extract, device, say)

    start = time.perf_counter()
    train, test = features(args.train_split), features(args.test_split)
    extraction_seconds = time.perf_counter() - start
    if subset is not None:
        for split, extracted in ((args.train_split, train), (args.test_split, test)):
            require_classes(extracted.labels, subset, layout.labels[label_name], data_path, split, " (--classes)")
        train, test = restrict_classes(train, subset), restrict_classes(test, subset)
    train_classes = sorted(set(train.labels.tolist()))
    if len(train_classes) < 2:
        raise DataError(data_path, f"label set '{label_name}' has {len(train_classes)} class(es) among the labelled "
                                   f"samples of split '{args.train_split}'; a probe needs at least 2")
    if len(test.labels) == 0:
        raise DataError(data_path, f"split '{args.test_split}' has no samples labelled in '{label_name}'")
    _check_finite(loaded.source, {args.train_split: train, args.test_split: test})
    merge_equal_stages(train, test)

    rows = []
    for train_stage, test_stage in zip(train.stages, test.stages):
        stage_start = time.perf_counter()
        options = dict(holdout_fraction=args.holdout_fraction, seed=args.seed)
        linear = linear_probe(train_stage.values, train.labels, test_stage.values, test.labels,
                              solver=args.solver, **options)
        knn = knn_probe(train_stage.values, train.labels, test_stage.values, test.labels, **options)
        row = {"stage": train_stage.name, "pool": args.pool, "pooled_size": train_stage.pooled_size,
               "dim": train_stage.dim, "same_as": list(train_stage.same_as), "linear": linear.as_dict(),
               "knn": knn.as_dict(), "seconds": round(time.perf_counter() - stage_start, 3)}
        rows.append(row)
        say(stage_line(row))
        warning = convergence_warning(row)
        if warning:
            _stderr(warning)
    card = loaded.card
    counts = [int((test.labels == value).sum()) for value in set(test.labels.tolist())]
    result = {
        "format": FORMAT, "checkpoint": loaded.source, "random_init": bool(args.random_init),
        "method": args.method or method_name(card, args.random_init),
        "seed": recorded_seed(card, args.random_init, args.seed),
        "modality": modality, "data": data_path, "labels": label_name,
        "classes": class_names(layout.labels[label_name], subset) if subset is not None else None,
        "train_split": args.train_split, "test_split": args.test_split, "holdout_fraction": args.holdout_fraction,
        "num_train": int(len(train.labels)), "num_test": int(len(test.labels)), "num_classes": len(train_classes),
        "chance": max(counts) / len(test.labels), "solver": args.solver, "device": str(device),
        "seconds": {"features": round(extraction_seconds, 3),
                    "total": round(time.perf_counter() - start, 3)},
        "stages": rows}
    if show is not None:
        show(result)
    if json_path:
        write_json(json_path, result)
    return result


def _check_finite(source: str, splits: dict[str, Any]) -> None:
    """A NaN or infinite feature (a diverged encoder) is one line naming the stage and the split."""
    import torch

    for split, extracted in splits.items():
        for stage in extracted.stages:
            if not bool(torch.isfinite(stage.values).all()):
                where = "the embedding" if stage.name == "embedding" else f"stage {stage.name}"
                raise DataError(source, f"{where} has NaN or infinite features on split '{split}' "
                                        f"(a diverged encoder?); nothing to probe")


def stage_name(row: dict[str, Any]) -> str:
    """``3``, ``embedding`` or ``embedding (= 4)`` when stage 4's features are the embedding's."""
    same = row.get("same_as") or []
    return row["stage"] + (f" (= {', '.join(same)})" if same else "")


def stage_line(row: dict[str, Any]) -> str:
    """One line for a finished stage: name, dim, linear and kNN top-1, the chosen C, seconds."""
    linear, knn = row["linear"], row["knn"]
    return (f"probe stage {stage_name(row)}: dim {row['dim']}, linear {100 * linear['top1']:.1f}% "
            f"(C={linear['chosen']['C']:.3g}, holdout {100 * linear['holdout_top1']:.1f}%), "
            f"kNN {100 * knn['top1']:.1f}%, {row['seconds']:.1f} s")


def convergence_warning(row: dict[str, Any]) -> Optional[str]:
    """One line when the final fit or some of the search's fits stopped before converging (at the iteration
    cap, or stalled in float64), else None."""
    linear = row["linear"]
    skipped = linear.get("not_converged") or []
    if linear.get("converged", True) and not skipped:
        return None
    parts = []
    if not linear.get("converged", True):
        parts.append(f"the final fit (C={linear['chosen']['C']:.3g}) stopped after {linear['iterations']} "
                     f"iterations before converging")
    if skipped:
        parts.append(f"{len(skipped)} of the {linear.get('candidates')} search fits stopped before converging "
                     f"(C={', '.join(f'{c:.3g}' for c in skipped)})")
    return f"warning: probe stage {stage_name(row)}: " + "; ".join(parts) + " (converged: false in the JSON)"


def render_table(result: dict[str, Any]) -> str:
    """The probe results as a plain-text table, one row per stage."""
    subject = (f"a random initialisation of {result['checkpoint']}'s architecture" if result.get("random_init")
               else result["checkpoint"])
    head = (f"probe of {subject} ({result['method']}, {result['modality']}) on {result['data']}: "
            f"'{result['labels']}'" + (f" classes {', '.join(result['classes'])}" if result.get("classes") else "")
            + f", {result['num_classes']} classes, {result['num_train']} train / "
            f"{result['num_test']} test samples, chance {100 * result['chance']:.1f}%"
            + (f"; {result['solver']} solver on {result['device']}, {result['seconds']['total']:.1f} s"
               if "seconds" in result else ""))
    names = [stage_name(row) for row in result["stages"]]
    width = max([9, *map(len, names)])
    lines = [head, f"{'stage':>{width}}  {'dim':>6}  {'linear':>7}  {'kNN':>7}  {'seconds':>7}  "
                   f"chosen (on a train holdout)"]
    for name, row in zip(names, result["stages"]):
        linear, knn = row["linear"], row["knn"]
        chosen = ", ".join(f"{key}={value:.3g}" for key, value in linear["chosen"].items())
        flag = "" if linear.get("converged", True) else " (not converged)"
        lines.append(f"{name:>{width}}  {row['dim']:>6}  {100 * linear['top1']:6.1f}%  {100 * knn['top1']:6.1f}%  "
                     f"{row.get('seconds', 0.0):7.1f}  {linear['solver']}: {chosen}{flag}; "
                     f"kNN: k={knn['chosen']['k']}, T={knn['chosen']['temperature']:g}")
    return "\n".join(lines)
