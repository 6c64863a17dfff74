"""Distillers: losses between a student's and a frozen teacher's outputs, by name from a registry."""
from crossmodal.distill.base import DistillResult, Distiller, stage_pairs
from crossmodal.distill.registry import (create_distiller, distiller_options, get_distiller, list_distillers,
                                         register_distiller)

__all__ = ["DistillResult", "Distiller", "create_distiller", "distiller_options", "get_distiller",
           "list_distillers", "register_distiller", "stage_pairs"]
