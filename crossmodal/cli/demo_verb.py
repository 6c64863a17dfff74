"""``crossmodal demo [--out DIR]``: the whole flow on generated RGB-D scenes, CRD student against scratch."""
from __future__ import annotations

import argparse
import sys

from crossmodal.argtypes import non_negative_int, positive_int
from crossmodal.cli.rerun import continued_by_rerun


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "demo", help="the whole flow on generated data: teacher, CRD student, probes, segmentation, report",
        description="Generate synthetic NYU-style RGB-D scenes, take an RGB teacher (ImageNet EfficientNet-Lite0 "
                    "from its installed package, which never saw the scenes; or, with --teacher trained, one "
                    "trained on their labels), distil a depth student from it with CRD (no depth labels), then "
                    "compare it with randomly initialised depth students of the same architecture: a linear probe "
                    "on the scene classes and segmentation transfer (a decoder over each frozen encoder), over "
                    "three probe and decoder seeds. About 6 minutes on 2 CPU cores. Writes DIR/results.json, "
                    "DIR/report/ and every run; finished steps in DIR are reused and an interrupted training or "
                    "segmentation step continues from its checkpoint when the same command runs again, so "
                    "delete DIR to start over.")
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--num", type=positive_int, default=2000, help="scenes to generate (default 2000)")
    parser.add_argument("--size", type=positive_int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--teacher", choices=("pretrained", "trained"), default="pretrained",
                        help="pretrained (default): ImageNet EfficientNet-Lite0, frozen; trained: a resnet10t trained "
                             "on the scenes' own classes and segmentation")
    parser.add_argument("--teacher-epochs", type=positive_int,
                        help="epochs of the teacher with --teacher trained (default: the shipped config's, 10)")
    parser.add_argument("--student-epochs", type=positive_int,
                        help="epochs of the CRD distillation (default: the shipped config's, 15)")
    parser.add_argument("--segment-epochs", type=positive_int, default=6,
                        help="epochs of each segmentation decoder (default 6)")
    parser.add_argument("--eval-seeds", type=positive_int, default=3,
                        help="seeds of the probes and decoders (and scratch's encoder), from --seed (default 3)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.demo import DemoOptions, run_demo

    with continued_by_rerun("demo"):
        run_demo(DemoOptions(out=args.out, seed=args.seed, num=args.num, size=args.size, teacher=args.teacher,
                             teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                             segment_epochs=args.segment_epochs, eval_seeds=args.eval_seeds, device=args.device,
                             progress=sys.stderr.isatty()))
    return 0
