"""The built-in NYU-style RGB-D scene generator (the project's embedded default data set).

Rooms with floor, walls, ceiling and objects, ray-cast through a pinhole camera into RGB, metric depth (clean,
and with Kinect-like noise and holes), a 13-class per-pixel label and an image-level class (the main object's
category). :mod:`~crossmodal.data.synthetic.scenes` draws and renders one scene,
:mod:`~crossmodal.data.synthetic.writer` writes many into a paired file; ``crossmodal prepare synthetic`` is the
command line.

Examples:
    >>> from crossmodal.data.synthetic import generate
    >>> generate("scenes.h5", num=4000, size=64, seed=0)
"""
from __future__ import annotations

from crossmodal.data.synthetic.scenes import (CLASS_NAMES, IGNORE_INDEX, MAX_DEPTH_M, NUM_SHAPE_CLASSES,
                                              SEG_CLASS_NAMES, render_scene)
from crossmodal.data.synthetic.writer import MAX_SIZE, MIN_SIZE, generate

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "MAX_DEPTH_M", "MAX_SIZE", "MIN_SIZE", "NUM_SHAPE_CLASSES",
           "SEG_CLASS_NAMES", "generate", "render_scene"]
