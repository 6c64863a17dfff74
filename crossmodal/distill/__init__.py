"""Distillers: losses between a student's and a frozen teacher's outputs, by name from a registry.

Importing the package registers the built-in distillers, in the order of the paper's comparison.
"""
from crossmodal.distill.base import DistillResult, Distiller, stage_pairs
from crossmodal.distill.registry import (check_options, create_distiller, distiller_options, get_distiller,
                                         list_distillers, register_distiller)
# The built-in distillers: each module registers itself on import, in this order (list_distillers()'s).
from crossmodal.distill import kd, fitnet, at, sp, cc, vid, rkd, pkt, nst, crd, crd_kd, dkd, mlld, c2kd  # noqa: F401

__all__ = ["DistillResult", "Distiller", "check_options", "create_distiller", "distiller_options", "get_distiller",
           "list_distillers", "register_distiller", "stage_pairs"]
