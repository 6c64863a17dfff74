"""The same as ``crossmodal prepare nyu ...``: the official labelled NYU-Depth V2 file -> paired HDF5 file.

A thin entry point to run from a checkout, not a module to import; the converter is
:mod:`crossmodal.data_prep.nyu` and ``--help`` lists its flags.

Usage: python data_prep/nyu.py --mat nyu_depth_v2_labeled.mat --meta nyu_meta/ --out nyu.h5 [--size 240 320]
"""
import os
import sys

if __name__ == "__main__":  # worker processes re-import this file: only the script itself runs the command
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    from crossmodal.cli.main import main

    sys.exit(main(["prepare", "nyu", *sys.argv[1:]]))
