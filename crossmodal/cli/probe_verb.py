"""``crossmodal probe --checkpoint CKPT --data FILE.h5``: linear and kNN probes of a frozen encoder, per stage."""
from __future__ import annotations

import argparse

from crossmodal.argtypes import non_negative_int, positive_int


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "probe", help="linear and kNN probes of a frozen encoder's stages",
        description="Probe a frozen encoder (eval mode, no augmentation): each stage is adaptively pooled to a "
                    "fixed size (at most ~8192 values unless --pooled-size) and flattened, the embedding is added "
                    "last; a linear classifier (L2 logistic regression on standardised features, fitted by "
                    "full-batch L-BFGS on --device) and a weighted kNN are fitted on the train split, their "
                    "hyper-parameters (C over 1e-6 .. 1e5, refined to 1/8 decade; k and T) chosen on a "
                    "stratified holdout of it, and scored once on the test split. A line per stage reports "
                    "progress on stderr; the table goes to stdout.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a run folder of train-teacher / distill, or an exported .safetensors file")
    parser.add_argument("--data", required=True, metavar="FILE.h5", help="the paired file to probe on")
    parser.add_argument("--modality", help="the input modality (default: the checkpoint's)")
    parser.add_argument("--labels", metavar="NAME", help="the class label set (default: the file's only one)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS",
                        help="probe these classes of the label set only (names or ids; e.g. the classes a teacher "
                             "never saw): the other classes' samples are left out of fit and score")
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
    parser.add_argument("--solver", choices=("torch", "sklearn"), default="torch",
                        help="linear probe solver: torch (default; L-BFGS on --device, C searched over 1e-6 .. 1e5) "
                             "or sklearn (scikit-learn's L-BFGS on C = 1e-3 .. 1e2, the slower reference)")
    parser.add_argument("--feature-cache", metavar="DIR",
                        help="keep the extracted features in DIR and reuse them while the encoder, data, split "
                             "and pooling are unchanged (default: no cache)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar over feature extraction")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="stratified part of the train split that chooses hyper-parameters (default 0.2)")
    parser.add_argument("--train-split", default="train", help="the split the probes fit (default train)")
    parser.add_argument("--test-split", default="test", help="the split the probes are scored on (default test)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="feature extraction batch (default 64)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--device", default="auto",
                        help="where the encoder, the features, the solver and kNN run: auto (cuda if available, "
                             "else cpu), cpu, cuda, cuda:N")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.eval.probe_run import ProbeOptions, render_table, run_probe

    options = ProbeOptions(
        checkpoint=args.checkpoint, data=args.data, modality=args.modality, labels=args.labels, classes=args.classes,
        stages=args.stages,
        random_init=args.random_init, seed=args.seed, method=args.method, pool=args.pool,
        pooled_size=args.pooled_size, solver=args.solver, holdout_fraction=args.holdout_fraction,
        train_split=args.train_split, test_split=args.test_split, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, feature_cache=args.feature_cache,
        progress=args.progress)
    # the table reaches stdout before the JSON is written: a refused write (one line) leaves the results seen
    run_probe(options, json_path=args.json, show=lambda result: print(render_table(result), flush=True))
    if args.json:
        print(f"written to {args.json}")
    return 0
