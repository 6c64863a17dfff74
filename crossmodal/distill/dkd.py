"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022): KD split into its target-class and
non-target-class parts, each with its own weight."""
from __future__ import annotations

from typing import Optional

import torch

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import (require_classifiers, require_non_negative, require_non_negative_int,
                                        require_positive, require_target)
from crossmodal.distill.registry import register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds



def _binary_and_non_target_log_probs(scaled: torch.Tensor, target: torch.Tensor,
                                     non_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From logits / T (B x C) and each row's target c: log b = (log p_c, log(1 - p_c)) (B x 2) and the
    log-probabilities over the non-target classes alone, log p^_i = z_i / T - logsumexp_{j != c} z_j / T
    (B x (C - 1), columns ``non_target``), both in log space (no probability is formed before its logarithm, so
    none underflows to a log of 0)."""
    target_logit = scaled.gather(1, target[:, None]).squeeze(1)
    others = scaled.gather(1, non_target)
    log_others = torch.logsumexp(others, dim=1)
    log_all = torch.logaddexp(target_logit, log_others)
    log_binary = torch.stack([target_logit - log_all, log_others - log_all], dim=1)
    return log_binary, others - log_others[:, None]


def _kl_sum(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """sum q (log q - log p) over every element, for finite log-probabilities (q = 0 after underflow adds 0)."""
    return (log_q.exp() * (log_q - log_p)).sum()


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of [0] Sec. 3 (see :class:`DKD`), each summed over the batch's rows, times T^2, divided by B.

    Args:
        student_logits: (B, C) with C >= 2; gradients flow to it.
        teacher_logits: (B, C), used as given (detach it first).
        target: (B,) the target class of each row, in [0, C).
        temperature: T > 0.
    """
    batch, classes = student_logits.shape
    # Column i of row b is class i for i < target_b and class i + 1 after it: the C - 1 non-target classes.
    columns = torch.arange(classes - 1, device=student_logits.device).expand(batch, classes - 1)
    non_target = columns + (columns >= target[:, None]).long()
    log_bs, log_ps = _binary_and_non_target_log_probs(student_logits / temperature, target, non_target)
    log_bt, log_pt = _binary_and_non_target_log_probs(teacher_logits / temperature, target, non_target)
    scale = temperature ** 2 / batch
    return _kl_sum(log_bt, log_bs) * scale, _kl_sum(log_pt, log_ps) * scale


@register_distiller("dkd")
class DKD(Distiller):
    """Decoupled knowledge distillation: KD's target-class (TCKD) and non-target-class (NCKD) parts, weighted
    separately, under a linear warm-up of the whole loss.

    For one sample of target class c, with the student's logits z^S and the teacher's z^T, temperature T and
    p_i = exp(z_i / T) / sum_j exp(z_j / T) for either network ([0] Sec. 3):

    - b = (p_c, 1 - p_c), the binary target / all-non-target distribution, 1 - p_c = sum_{i != c} p_i;
    - p^_i = exp(z_i / T) / sum_{j != c} exp(z_j / T) for i != c, the distribution over the non-target classes;
    - TCKD = KL(b^T || b^S) = sum_{k in {c, not c}} b^T_k log(b^T_k / b^S_k);
    - NCKD = KL(p^^T || p^^S) = sum_{i != c} p^^T_i log(p^^T_i / p^^S_i);
    - DKD = w(e) * T^2 * (alpha * TCKD + beta * NCKD), averaged over the batch,

    where KD = KL(p^T || p^S) = TCKD + (1 - p^T_c) NCKD is the classical loss they decouple ([0] Sec. 3). The
    warm-up factor in our (0-based) epoch e is w(e) = min((e + 1) / warmup, 1), and 1 when ``warmup`` is 0:
    [1]'s trainer counts epochs from 1 and weighs with min(epoch / warmup, 1), so our epoch e (its epoch e + 1)
    gets its factor exactly: 1 / warmup in the first epoch, 1 from epoch ``warmup - 1`` on. The epoch comes from
    :meth:`set_epoch` (the trainer calls it before each epoch, again after a resume) and is a buffer, so a
    checkpoint carries it; before any call it is 0, the first epoch.

    Everything is computed in log space: log b from logsumexp over the target and the non-target logits, log p^
    as the log-softmax of the C - 1 non-target logits gathered out of each row (the target class is removed, not
    masked). C >= 2 classes are needed; with C = 2 the non-target distribution has one class and NCKD = 0.
    Logits in float16 / bfloat16 are computed in float32. ``logs`` holds ``tckd`` and ``nckd`` (each times T^2,
    batch-averaged, without alpha, beta or the warm-up), ``warmup`` (w(e)) and ``agreement`` (the fraction of
    rows where the student's and the teacher's argmax agree).

    The target class. [0] and [1] use the ground-truth label. Our transfer sets are often label-free, so
    ``target`` chooses: ``"auto"`` takes each row's class label where the batch carries labels and the label is
    not -1, and the teacher's argmax otherwise; ``"labels"`` is the same but needs the run to have class labels
    (``loss.class_labels``; refused at construction without them); ``"teacher"`` always takes the teacher's
    argmax and ignores labels. Rows labelled -1 (unlabelled) always take the teacher's argmax.

    The defaults of alpha, beta, temperature and warmup are [1]'s ``mdistiller/engine/cfg.py``
    (``CFG.DKD.ALPHA = 1.0``, ``BETA = 8.0``, ``T = 4.0``, ``WARMUP = 20``), which its config for [0]'s
    headline CIFAR-100 pair (``configs/cifar100/dkd/res32x4_res8x4.yaml``, ResNet32x4 -> ResNet8x4) keeps
    unchanged. ``default_weight`` is 1.0: [1] weighs the cross-entropy with 1.0 (``CFG.DKD.CE_WEIGHT``) and the
    DKD term with 1.0 (alpha and beta carry its scale); the cross-entropy itself is the trainer's (``loss.ce``).

    Args:
        student: the student encoder's sizes; needs a classifier head with C >= 2 classes.
        teacher: the teacher encoder's sizes; the same number of classes.
        num_samples: size of the transfer set (unused).
        labels: (N,) class label of every transfer sample (-1 unlabelled) or None; only checked to lie in
            [-1, C) (the batch's labels come to :meth:`forward`).
        alpha: weight of TCKD, a finite number >= 0; default 1.0.
        beta: weight of NCKD, a finite number >= 0; default 8.0 ([1]'s CIFAR configs lower it to 2.0 for the
            ResNet56 / ResNet110 teachers and to 6.0 for VGG13 -> VGG8 / MobileNetV2 and WRN-40-2 -> WRN; its
            ImageNet configs use 0.5).
        temperature: T, a finite number > 0; default 4.0 (1.0 in [1]'s ImageNet configs).
        warmup: epochs of linear warm-up, an integer >= 0 (0: none); default 20 (1 in [1]'s ImageNet configs).
        target: ``"auto"``, ``"labels"`` or ``"teacher"`` (above); default ``"auto"`` (ours).

    Raises:
        ConfigError: heads with fewer than 2 or different numbers of classes, a bad option, ``target="labels"``
            without class labels, or labels outside [-1, C).

    Examples:
        >>> dkd = DKD(student_spec, teacher_spec, num_samples=1000, beta=6.0)
        >>> dkd.set_epoch(0)
        >>> dkd(student_out, teacher_out, index, labels).loss  # 1/20 of the full loss in the first epoch

    Departures from the official code [1]:

    - NCKD removes the target class from each row (a gather of the C - 1 other logits) instead of subtracting
      1000 from the target's logit / T before the softmax. The two agree to rounding (about 1e-7 relative in
      float32, 1e-15 in float64 on random logits) unless the target's logit / T exceeds every other by nearly
      1000: [1] then leaves the target a share e^(gap - 1000) of its "non-target" distribution.
    - TCKD is computed from log-sum-exps, not as torch.log of softmax probabilities summed per group: [1] gives
      inf or NaN once a group's probability underflows to 0 (a logit / T gap beyond about 100 in float32, as
      from a confident teacher or student); ours stays finite and exact. Elsewhere the two agree to rounding.
    - The epoch is 0-based here (:meth:`set_epoch`); the factor is the same per epoch (above). ``warmup = 0`` is
      allowed and means no warm-up; [1] would divide by zero.
    - The target class may be the teacher's prediction (``target``), since our transfer sets may be unlabelled;
      [1] always uses the label.
    - The cross-entropy with the labels is not part of this loss (the trainer adds it with ``loss.ce``).

    - [0] Decoupled Knowledge Distillation, Zhao, Cui, Song, Qiu, Liang, CVPR 2022,
      https://arxiv.org/abs/2203.08679,
      https://openaccess.thecvf.com/content/CVPR2022/html/Zhao_Decoupled_Knowledge_Distillation_CVPR_2022_paper.html
    - [1] mdistiller, megvii-research, https://github.com/megvii-research/mdistiller,
      ``mdistiller/distillers/DKD.py`` (loss), ``mdistiller/engine/cfg.py`` (defaults),
      ``mdistiller/engine/trainer.py`` (epochs from 1), ``configs/cifar100/dkd/*.yaml``
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, alpha: float = 1.0, beta: float = 8.0,
                 temperature: float = 4.0, warmup: int = 20, target: str = "auto") -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        classes = require_classifiers(student.num_classes, teacher.num_classes, "dkd")
        if classes < 2:
            raise ConfigError(f"dkd needs classifier heads with at least 2 classes (a target and a non-target "
                              f"class), got {classes}")
        self.alpha = require_non_negative("alpha", alpha, "dkd")
        self.beta = require_non_negative("beta", beta, "dkd")
        self.temperature = require_positive("temperature", temperature, "dkd")
        self.warmup = require_non_negative_int("warmup", warmup, "dkd")
        require_target(target, labels is not None, "dkd")
        if labels is not None and labels.numel() > 0:
            low, high = int(labels.min()), int(labels.max())
            if low < -1 or high >= classes:
                raise ConfigError(f"dkd: class labels must lie in [-1, {classes}) for heads with {classes} "
                                  f"classes, got values in [{low}, {high}]")
        self.target = target
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=True)

    def set_epoch(self, epoch: int) -> None:
        """Keep the epoch about to be trained (from 0) for the warm-up."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"dkd: the epoch must be an integer >= 0, got {epoch!r}")
        self.epoch.fill_(epoch)

    def warmup_factor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """w(e) = min((e + 1) / warmup, 1) (1 without warm-up), a 0-dim tensor on the buffer's device (read
        without a device synchronisation)."""
        if self.warmup == 0:
            return torch.ones((), dtype=dtype, device=self.epoch.device)
        return ((self.epoch + 1).to(dtype) / self.warmup).clamp(max=1.0)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        if student.logits is None or teacher.logits is None:
            raise ValueError("dkd: both student and teacher outputs must carry logits")
        dtype = torch.promote_types(torch.promote_types(student.logits.dtype, teacher.logits.dtype), torch.float32)
        student_logits = student.logits.to(dtype)
        teacher_logits = teacher.logits.detach().to(dtype)
        teacher_class = teacher_logits.argmax(1)
        if self.target == "teacher" or (labels is None and self.target == "auto"):
            target = teacher_class
        elif labels is None:
            raise ValueError("dkd: 'target' is 'labels' but the batch carries no class labels")
        else:
            labels = labels.to(teacher_class.device).long()
            target = torch.where(labels >= 0, labels, teacher_class)
        tckd, nckd = dkd_parts(student_logits, teacher_logits, target, self.temperature)
        factor = self.warmup_factor(dtype)
        loss = factor * (self.alpha * tckd + self.beta * nckd)
        agreement = (student_logits.detach().argmax(1) == teacher_class).float().mean()
        return DistillResult(loss, {"tckd": tckd.detach(), "nckd": nckd.detach(), "warmup": factor,
                                    "agreement": agreement})
