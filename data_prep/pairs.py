"""The same as ``crossmodal prepare pairs ...``: a folder (or a CSV index) of paired image files -> paired HDF5 file.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.pairs` and ``--help`` lists its flags.

Usage: python data_prep/pairs.py --src my_pairs/ --out pairs.h5
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "pairs", *sys.argv[1:]]))
