"""The same as ``crossmodal prepare images ...``: a class-folder image tree, or a zip of one -> paired HDF5 file.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.images` and ``--help`` lists its flags.

Usage: python data_prep/images.py --src cifar10-jpeg.zip --out cifar10.h5 [--max-per-class 500]
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "images", *sys.argv[1:]]))
