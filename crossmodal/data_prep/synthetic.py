"""The built-in NYU-style RGB-D scene generator -> paired file (the project's embedded default data set).

Rooms with floor, walls, ceiling and objects, ray-cast through a pinhole camera into RGB, metric depth (clean,
and with Kinect-like noise and holes), a 13-class per-pixel label and an image-level class (the main object's
category). Five classes differ by shape (visible in depth), five share one shape and differ by colour and
texture (visible in RGB only), so a depth network has something to learn from an RGB teacher.
See :mod:`crossmodal.data.synthetic` for the scenes themselves and the generator behind this command.
"""
from __future__ import annotations

import argparse

from crossmodal.argtypes import positive_int
from crossmodal.data.synthetic import MAX_SIZE, MIN_SIZE, generate
from crossmodal.data_prep.common import add_output_arguments

NAME = "synthetic"
HELP = "generate the built-in NYU-style synthetic RGB-D scene data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the paired HDF5 file to write")
    parser.add_argument("--num", type=positive_int, default=4000, help="number of scenes (default 4000)")
    parser.add_argument("--size", type=positive_int, default=64,
                        help=f"side of the square images in pixels, {MIN_SIZE}..{MAX_SIZE} (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="scene i is drawn from the seed (seed, i)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes in the test split")
    parser.add_argument("--no-noise", action="store_true", help="raw_depth without sensor noise or holes")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="rendering processes (default: the CPU count, at most 8); "
                             "the output does not depend on it")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> None:
    generate(args.out, num=args.num, size=args.size, seed=args.seed, test_fraction=args.test_fraction,
             noise=not args.no_noise, workers=args.workers, overwrite=args.overwrite,
             compression=args.compression, depth_storage=args.depth_storage)
