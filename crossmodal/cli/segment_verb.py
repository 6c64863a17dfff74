"""``crossmodal segment --checkpoint CKPT --data FILE.h5 [--labels SEGSET]``: segmentation transfer of a student.

Running the same command again continues it (see :mod:`crossmodal.eval.segment`), so that is the hint printed
after SIGTERM."""
from __future__ import annotations

import argparse
import sys

from crossmodal.argtypes import non_negative_int, positive_int
from crossmodal.cli.rerun import continued_by_rerun

PROTOCOL_CHOICES = ("finetune", "frozen", "both")


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "segment", help="segmentation transfer: a decoder over the student, fine-tuned or frozen",
        description="Train a light FCN/FPN decoder over the encoder of CKPT (a run folder or an exported "
                    ".safetensors student) on the train split and score it on the test split: pixel accuracy, "
                    "mean class accuracy, mIoU over the classes present and per-class IoU, from a confusion "
                    "matrix over the whole split. 'finetune' trains the whole network, 'frozen' only the decoder "
                    "(the encoder's weights and BatchNorm statistics are kept). Writes one training run, a "
                    "preview PNG per protocol and segment.json into --out. Stopped (SIGTERM, a full disk), the "
                    "same command run again continues from the last checkpoint; with other settings it is "
                    "refused.")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="run folder or .safetensors file")
    parser.add_argument("--data", required=True, metavar="FILE.h5", help="the paired file")
    parser.add_argument("--labels", metavar="SEGSET",
                        help="its segmentation label set (default: the file's only one)")
    parser.add_argument("--modality", help="input modality (default: the student's; needed for a bare file)")
    parser.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="both",
                        help="finetune: train the whole network; frozen: the decoder only; both (default)")
    parser.add_argument("--random-init", action="store_true",
                        help="the same architecture randomly initialised (seeded by --seed): the scratch baseline")
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs of each protocol (default 30)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate, cosine schedule "
                        "(default 0.01)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="training batch size (default 16)")
    parser.add_argument("--eval-every", type=positive_int, default=1, metavar="N",
                        help="epochs between the test split's monitoring scores in the curves (default 1; the "
                             "result is scored once after the last epoch)")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                        help="resize / crop to H x W (default: the stored size)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random resized crop and flip while training (default: on)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the decoder (and --random-init encoder), data order, augmentation")
    parser.add_argument("--method", help="method name recorded in the JSON (default: from the model card)")
    parser.add_argument("--train-split", default="train", metavar="SPLIT",
                        help="the split the decoder is trained on (default train)")
    parser.add_argument("--test-split", default="test", metavar="SPLIT",
                        help="the split scored once after the last epoch (default test)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: CKPT/segment-LABELS-PROTOCOL"
                        "[-scratch], or beside a bare file)")
    parser.add_argument("--json", metavar="OUT", help="also write the result JSON here")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, metavar="N",
                        help="DataLoader worker processes (default 0: read in the main process); may change "
                             "when the same command continues a stopped run")
    parser.add_argument("--loader", choices=("workers", "device"), default="workers",
                        help="workers: a DataLoader (default); device: the splits held and augmented on --device")
    parser.add_argument("--decoder-channels", type=positive_int, default=64, metavar="C",
                        help="width of the segmentation decoder's convolutions (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                        help="TensorBoard events in each protocol folder's tb/ (default: on when the tensorboard "
                             "package is installed)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.eval.segment import PROTOCOLS, SegmentOptions, format_table, run_segment

    options = SegmentOptions(
        checkpoint=args.checkpoint, data=args.data, labels=args.labels, modality=args.modality,
        protocols=PROTOCOLS if args.protocol == "both" else (args.protocol,), random_init=args.random_init,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, size=args.size, augment=args.augment,
        eval_every=args.eval_every, seed=args.seed, out=args.out, json_path=args.json, num_workers=args.num_workers,
        loader=args.loader,
        decoder_channels=args.decoder_channels, train_split=args.train_split, test_split=args.test_split,
        method=args.method, device=args.device, progress=sys.stderr.isatty(), tensorboard=args.tensorboard)
    with continued_by_rerun("segment"):
        result = run_segment(options)
    print(format_table(result))
    for protocol, scores in result["results"].items():
        print(f"  {protocol} preview: {scores['preview']}")
    return 0
