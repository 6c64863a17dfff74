"""Multi-level logit distillation (MLLD, Jin, Wang, Lin, CVPR 2023): the teacher's softened predictions at several
temperatures matched per sample, as the batch's sample-by-sample Gram matrix and as its class-by-class matrix."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.options import is_finite_number, require_classifiers, require_non_negative
from crossmodal.distill.registry import register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds

PAPER_TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)
WEIGHTS = ("instance_weight", "batch_weight", "class_weight")


def _augmented_log_probs(logits: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """Prediction augmentation: log softmax(z / T_k) over the classes for every temperature, stacked (K, B, C)."""
    return F.log_softmax(torch.stack([logits / temperature for temperature in temperatures]), dim=2)


def mlld_levels(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                temperatures: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three unweighted alignment losses (instance, batch, class) of [0], each summed over the temperatures.

    With P_k = softmax(Z / T_k) row-wise (B x C, one row per sample):

    - instance = (1/B) sum_k sum_i KL(P^t_k[i] || P^s_k[i]);
    - batch    = (1/B) sum_k ||P^t_k P^t_k^T - P^s_k P^s_k^T||_F^2  (B x B Gram matrices);
    - class    = (1/C) sum_k ||P^t_k^T P^t_k - P^s_k^T P^s_k||_F^2  (C x C matrices).

    All temperatures go through one softmax and one batched matrix product. The arithmetic is float32 at least
    (float64 stays float64), also under autocast, whose bfloat16 matrix products would round the Gram matrices'
    entries to 3 significant digits before their difference is taken.

    Args:
        student_logits: (B, C); gradients flow to it.
        teacher_logits: (B, C), used as given (detach it first).
        temperatures: the K temperatures T_k > 0.
    """
    batch, classes = student_logits.shape
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    with torch.autocast(student_logits.device.type, enabled=False):
        log_p_student = _augmented_log_probs(student_logits.to(dtype), temperatures)
        with torch.no_grad():
            log_p_teacher = _augmented_log_probs(teacher_logits.to(dtype), temperatures)
            p_teacher = log_p_teacher.exp()
            gram_teacher = p_teacher @ p_teacher.transpose(1, 2)
            class_teacher = p_teacher.transpose(1, 2) @ p_teacher
        p_student = log_p_student.exp()
        instance = (p_teacher * (log_p_teacher - log_p_student)).sum() / batch
        batch_term = (gram_teacher - p_student @ p_student.transpose(1, 2)).pow(2).sum() / batch
        class_term = (class_teacher - p_student.transpose(1, 2) @ p_student).pow(2).sum() / classes
    return instance, batch_term, class_term


def _temperatures(value: object) -> tuple[float, ...]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_finite_number(entry) and entry > 0 for entry in value)):
        raise ConfigError(f"mlld: 'temperatures' must be a non-empty list of finite positive numbers, got {value!r}")
    return tuple(float(entry) for entry in value)


@register_distiller("mlld")
class MLLD(Distiller):
    """Multi-level logit distillation [0]: prediction augmentation by several temperatures, then the student's
    augmented predictions aligned with the teacher's at the instance, batch and class level.

    For a batch of B samples with logits Z (B x C; student s, teacher t) and temperatures T_1..T_K, prediction
    augmentation ([0] Sec. 3) gives K predictions per sample, P_k = softmax(Z / T_k) row-wise (B x C). Then:

    - instance level: L_ins = (1/B) sum_{k=1..K} sum_{i=1..B} KL(P^t_k[i] || P^s_k[i])
      = (1/B) sum_k sum_i sum_j P^t_k[i,j] log(P^t_k[i,j] / P^s_k[i,j]), with no T^2 factor ([0]);
    - batch level (input correlation): G_k = P_k P_k^T (B x B, G_k[a,b] = sum_j P_k[a,j] P_k[b,j]),
      L_batch = (1/B) sum_k ||G^t_k - G^s_k||_F^2 ([0]);
    - class level (category correlation): M_k = P_k^T P_k (C x C, M_k[c,d] = sum_i P_k[i,c] P_k[i,d]),
      L_class = (1/C) sum_k ||M^t_k - M^s_k||_F^2 ([0]);
    - MLLD = w_ins L_ins + w_batch L_batch + w_class L_class, all weights 1 in [0] (its total objective adds
      the three levels to the task loss without coefficients).

    [0] writes L_ins as a sum over the samples, as it writes the training objective; here, as for the
    cross-entropy that the trainer adds with it, that sum is taken as a mean over the batch (and [1] does the
    same), so that the paper's one-to-one weighting holds per batch whatever the batch size. The batch and class
    terms are per-batch quantities by construction (B is the batch on each process under DDP, as it is on each
    GPU under [1]'s DataParallel).

    All temperatures are computed at once (one (K, B, C) softmax, batched matrix products), in float32 or
    wider even under autocast. ``logs`` holds ``instance``, ``batch`` and ``class`` (the three levels, summed
    over the temperatures, unweighted) and ``agreement`` (the fraction of samples whose student and teacher
    argmax agree). Class labels are not used: MLLD needs no target class.

    ``default_weight`` is 1.0: [0] adds the MLLD terms to the cross-entropy with weight 1 (as do [1]'s ImageNet
    configs, CE_WEIGHT = KD_WEIGHT = 0.5); the cross-entropy itself is the trainer's (``loss.ce``).

    Args:
        student: the student encoder's sizes; needs a classifier head.
        teacher: the teacher encoder's sizes; the same number of classes.
        num_samples: size of the transfer set (unused).
        labels: unused.
        temperatures: the temperatures T_k of the prediction augmentation, a non-empty list of finite positive
            numbers; default (2, 3, 4, 5, 6) ([0]; also [1]'s CIFAR-100 set: ``CFG.KD.TEMPERATURE = 4`` plus
            the hard-coded 3, 5, 2, 6).
        instance_weight: w_ins, a finite number >= 0; default 1.0 ([0]).
        batch_weight: w_batch, a finite number >= 0; default 1.0 ([0]).
        class_weight: w_class, a finite number >= 0; default 1.0 ([0]). At least one weight must be positive.

    Raises:
        ConfigError: heads without classes or with different numbers of classes, or a bad option.

    Examples:
        >>> mlld = MLLD(student_spec, teacher_spec, num_samples=1000, temperatures=[1, 2, 3, 5, 6])
        >>> mlld(student_out, teacher_out, index).logs["batch"]

    Departures from the official code [1] (``KD_ours.forward_train``; the comparison script shows each):

    - No T^2 factor: [1]'s instance term is T_k^2 * KL (averaged over the batch) at every temperature, [0]'s is
      the plain KL, so [1]'s instance level equals ours with each temperature's term times T_k^2. The batch
      (sum / B) and class (sum / C) terms are the same as [1]'s ``bc_loss`` and ``cc_loss``.
    - One view: [1] feeds a weakly and a strongly augmented view of every image to both networks and adds the
      instance term of both views (its strong-view sum takes its T = 2 and T = 6 terms from the weak view) but
      the batch and class terms of the weak view only (the strong-view ones are computed and dropped). Here
      student and teacher see one view each and every level is counted once; data augmentation is the data
      pipeline's business.
    - No confidence mask: [1] thresholds the teacher's weak-view confidence (max softmax, and per class the
      summed softmax) at the batch median and multiplies the weak-view terms by the mask, a step [0] does not
      describe. Since [1] multiplies the already batch-reduced losses (``reduce=True``) by the mask and takes
      the mean, the mask selects nothing: it scales the weak-view terms by the fraction of samples (classes) at
      or below the median, about 1/2.
    - Temperatures: [1]'s ImageNet configs set ``KD.TEMPERATURE = 1``, making its set (1, 3, 5, 2, 6); we keep
      [0]'s set (pass ``temperatures`` to change it).
    - Weights: [1] multiplies every term by ``KD_WEIGHT`` and the cross-entropy (of both views) by
      ``CE_WEIGHT``, 0.9 and 0.1 by default (CIFAR-100) and 0.5 and 0.5 on ImageNet; [0] gives the levels no
      coefficients, so ours are 1 and ``default_weight`` is 1.
    - Computed in float32 at least under autocast, all temperatures batched; [1] loops over hand-written
      per-temperature calls.

    - [0] Multi-Level Logit Distillation, Ying Jin, Jiaqi Wang, Dahua Lin, CVPR 2023, pp. 24276-24285,
      https://openaccess.thecvf.com/content/CVPR2023/html/Jin_Multi-Level_Logit_Distillation_CVPR_2023_paper.html
    - [1] Multi-Level-Logit-Distillation (official code, built on mdistiller),
      https://github.com/Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/distillers/KD_ours.py`` (loss),
      ``mdistiller/engine/cfg.py`` (``KD.TEMPERATURE``, ``KD.LOSS.*_WEIGHT``), ``configs/*/ours/*.yaml`` and
      ``configs/imagenet/*/kd_ours.yaml``
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None,
                 temperatures: Sequence[float] = PAPER_TEMPERATURES, instance_weight: float = 1.0,
                 batch_weight: float = 1.0, class_weight: float = 1.0) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        require_classifiers(student.num_classes, teacher.num_classes, "mlld")
        self.temperatures = _temperatures(temperatures)
        self.instance_weight = require_non_negative("instance_weight", instance_weight, "mlld")
        self.batch_weight = require_non_negative("batch_weight", batch_weight, "mlld")
        self.class_weight = require_non_negative("class_weight", class_weight, "mlld")
        weights = (self.instance_weight, self.batch_weight, self.class_weight)
        if not any(weight > 0 for weight in weights):
            raise ConfigError(f"mlld: at least one of 'instance_weight', 'batch_weight', 'class_weight' must be "
                              f"positive, got {', '.join(map(str, weights))}")

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(logits=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        if student.logits is None or teacher.logits is None:
            raise ValueError("mlld: both student and teacher outputs must carry logits")
        teacher_logits = teacher.logits.detach()
        instance, batch, class_ = mlld_levels(student.logits, teacher_logits, self.temperatures)
        loss = self.instance_weight * instance + self.batch_weight * batch + self.class_weight * class_
        agreement = (student.logits.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
        return DistillResult(loss, {"instance": instance.detach(), "batch": batch.detach(),
                                    "class": class_.detach(), "agreement": agreement})
