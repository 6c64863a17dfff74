"""The same as ``crossmodal prepare repack ...``: a paired file (e.g. version 1) -> the current format.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.repack` and ``--help`` lists its flags.

Usage: python data_prep/repack.py --src old.h5 --out new.h5 [--compression blosc-lz4] [--depth-storage uint16]
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "repack", *sys.argv[1:]]))
