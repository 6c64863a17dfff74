"""``crossmodal probe --checkpoint CKPT --data FILE.h5``: linear and kNN probes of a frozen encoder, per stage."""
from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from crossmodal.cli.arguments import non_negative_int, positive_int
from crossmodal.errors import ConfigError, DataError

FORMAT = "crossmodal-probe/1"


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "probe", help="linear and kNN probes of a frozen encoder's stages",
        description="Probe a frozen encoder (eval mode, no augmentation): each stage is adaptively pooled to a "
                    "fixed size (at most ~8192 values unless --pooled-size) and flattened, the embedding is added "
                    "last; a linear classifier (standardised features, logistic regression or SGD for large "
                    "sets) and a weighted kNN are fitted on the train split, their hyper-parameters chosen on a "
                    "stratified holdout of it, and scored once on the test split.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a run folder of train-teacher / distill, or an exported .safetensors file")
    parser.add_argument("--data", required=True, metavar="FILE.h5", help="the paired file to probe on")
    parser.add_argument("--modality", help="the input modality (default: the checkpoint's)")
    parser.add_argument("--labels", metavar="NAME", help="the class label set (default: the file's only one)")
    parser.add_argument("--stages", type=int, nargs="+", metavar="I",
                        help="stage indices to probe, negatives from the end (default: all); the embedding "
                             "is always probed")
    parser.add_argument("--random-init", action="store_true",
                        help="probe a randomly initialised encoder of the same architecture (scratch baseline)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the holdout draw and of --random-init (default 0)")
    parser.add_argument("--method", help="the method name written to the JSON (default: from the model card)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON (crossmodal-probe/1)")
    parser.add_argument("--pool", choices=("avg", "max"), default="avg", help="adaptive pooling (default avg)")
    parser.add_argument("--pooled-size", type=positive_int, metavar="N",
                        help="pool every stage to N x N (default: per stage, at most ~8192 values)")
    parser.add_argument("--solver", choices=("auto", "sklearn", "torch"), default="auto",
                        help="linear probe solver (default auto: torch above 2e7 feature values)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="stratified part of the train split that chooses hyper-parameters (default 0.2)")
    parser.add_argument("--train-split", default="train", help="the split the probes fit (default train)")
    parser.add_argument("--test-split", default="test", help="the split the probes are scored on (default test)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="feature extraction batch (default 64)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.set_defaults(handler=_run)


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


def _run(args: argparse.Namespace) -> int:
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
    if args.json:
        ensure_folder(os.path.dirname(os.path.abspath(args.json)))
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
    print(render_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"written to {args.json}")
    return 0


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
