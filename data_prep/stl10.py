"""The same as ``crossmodal prepare stl10 ...``: the STL-10 binary release -> paired HDF5 file.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.stl10` and ``--help`` lists its flags.

Usage: python data_prep/stl10.py --src stl10_binary --out stl10.h5 [--max-unlabeled 20000]
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "stl10", *sys.argv[1:]]))
