"""Building blocks of a memory-based contrastive loss (CRD's), reusable on their own.

- :mod:`~crossmodal.distill.contrast.memory`: the rows contrasted against (:class:`MemoryBank`,
  :class:`EmbeddingQueue`).
- :mod:`~crossmodal.distill.contrast.sampler`: which rows each anchor meets (:class:`ContrastSampler`).
- :mod:`~crossmodal.distill.contrast.objective`: scores, the NCE and InfoNCE losses and their closed-form
  gradients (:func:`contrast_scores`, :func:`nce_objective`, :func:`info_nce_objective`, :class:`AttachGradient`).
"""
from crossmodal.distill.contrast.memory import EmbeddingQueue, MemoryBank
from crossmodal.distill.contrast.objective import (AttachGradient, choose_scoring, contrast_scores,
                                                   info_nce_objective, mean_exp_score, nce_objective)
from crossmodal.distill.contrast.sampler import ContrastSampler

__all__ = ["AttachGradient", "ContrastSampler", "EmbeddingQueue", "MemoryBank", "choose_scoring", "contrast_scores",
           "info_nce_objective", "mean_exp_score", "nce_objective"]
