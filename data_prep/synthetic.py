"""The same as ``crossmodal prepare synthetic ...``: the built-in NYU-style synthetic scenes -> paired HDF5 file.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.synthetic` and ``--help`` lists its flags.

Usage: python data_prep/synthetic.py --out synthetic.h5 [--num 4000] [--size 64] [--seed 0]
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "synthetic", *sys.argv[1:]]))
