"""Contrastive Representation Distillation (CRD).

- [0] Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020. https://arxiv.org/abs/1910.10699
- [1] Reference code: github.com/HobbitLong/RepDistiller (``crd/memory.py``, ``crd/criterion.py``).
- [2] Tian, Krishnan, Isola. Contrastive Multiview Coding (CMC), issue #23: the one-shot estimate of Z.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal import runtime
from crossmodal.distill.base import DistillResult, Distiller
from crossmodal.distill.contrast import (AttachGradient, ContrastSampler, EmbeddingQueue, MemoryBank, choose_scoring,
                                         contrast_scores, info_nce_objective, mean_exp_score, nce_objective)
from crossmodal.distill.options import is_finite_number, is_integer
from crossmodal.distill.registry import register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds


class EmbedHead(nn.Module):
    """Linear map of a pooled feature to the contrast space, optionally batch-normalised, then l2 normalisation.

    RepDistiller's ``Embed`` is the linear map and the l2 normalisation alone (``norm=False``). With ``norm``
    (the default here) a BatchNorm without affine parameters centres and scales the linear outputs over the
    batch before the l2 normalisation. That matters: a CNN's pooled embedding is post-ReLU, every entry positive
    with a large common mean, so a bare linear head maps all samples close to one direction, and a contrast
    against a memory (detached rows) barely pushes them apart. On such features the bare head leaves CRD stuck at
    chance (see ``experiments/crd_head_check.py``); the centred head learns. The normalisation runs in float32, so
    that embeddings and scores stay exact under autocast. Batch statistics are used (and the running ones
    updated) only in a training step: in eval mode, under ``torch.no_grad`` (CRD's evaluation, which changes
    nothing) and for a batch of one the running statistics are used.
    """

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim, affine=False) if norm else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        embedded = self.linear(features.flatten(1))
        if self.norm is None:
            return F.normalize(embedded.float(), dim=1)
        norm = self.norm
        embedded = embedded.to(norm.running_mean.dtype)
        if self.training and torch.is_grad_enabled() and embedded.shape[0] > 1:
            mean, variance, count = _batch_moments(embedded)
            with torch.no_grad():
                unbiased = variance * _bessel_factor(count)
                norm.running_mean.lerp_(mean.detach(), norm.momentum)
                norm.running_var.lerp_(unbiased.detach(), norm.momentum)
                norm.num_batches_tracked.add_(1)
        else:
            mean, variance = norm.running_mean, norm.running_var
        return F.normalize((embedded - mean) * torch.rsqrt(variance + norm.eps), dim=1).float()


def _batch_moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """Per-column mean and (biased) variance over the batch, over every rank's batch under torch.distributed
    (as SyncBatchNorm: the all-reduce is differentiable, so the gradient is that of the whole batch), and the
    number of rows: a number, or under torch.distributed a scalar tensor (reading it would wait for the device)."""
    if not runtime.is_distributed():
        return values.mean(0), values.var(0, unbiased=False), float(values.shape[0])
    from torch.distributed.nn.functional import all_reduce

    totals = all_reduce(torch.cat([values.sum(0), values.new_full((1,), values.shape[0])]))
    count = totals[-1]
    mean = totals[:-1] / count
    variance = all_reduce(((values - mean) ** 2).sum(0)) / count  # two passes, as var() does on one process
    return mean, variance, count.detach()


def _bessel_factor(count: float | torch.Tensor) -> float | torch.Tensor:
    """count / (count - 1), the factor from the biased to the unbiased variance (1 for a count of 1 or less)."""
    if torch.is_tensor(count):
        return count / (count - 1.0).clamp(min=1.0)
    return count / max(count - 1.0, 1.0)


@register_distiller("crd")
class CRD(Distiller):
    """CRD between the student's and the teacher's pooled embeddings, faithful to RepDistiller by default.

    The defaults are RepDistiller's CRD objective with negatives drawn uniformly over the transfer set (its
    ``AliasMethod`` path), which needs no labels, as a cross-modal transfer set usually has none. RepDistiller's
    published CIFAR-100 and ImageNet runs used labelled samplers that draw negatives from other classes only:
    pass ``labels`` and ``negatives='other_classes'`` to reproduce those (drawn with replacement here; its
    CIFAR sampler draws without replacement, which differs negligibly when K is well below N).

    Each embedding goes through its own trainable head (linear to ``feat_dim``, batch-normalised unless
    ``head_batchnorm=False``, l2 normalised; see :class:`EmbedHead` for why the default departs from the
    reference); the teacher's
    backbone stays frozen. Two memories hold past student and teacher embeddings. The student anchor is
    contrasted with its positive and K negative rows of the teacher memory, and the teacher anchor with the
    student memory; the loss is the sum of the two NCE losses. After each step the batch's rows are updated.

    Args:
        feat_dim: contrast-space size d (128).
        num_negatives: K negatives per positive (16384).
        temperature: T in exp(score / T) (0.07).
        momentum: bank update normalize(m x row + (1 - m) x embedding) (0.5).
        mode: ``'exact'`` (the sample's own row is its positive) or ``'relax'`` (a random same-class row).
        negatives: ``'all'`` (uniform over the data set) or ``'other_classes'`` (needs labels).
        objective: ``'nce'`` (the paper's) or ``'info_nce'`` (softmax cross-entropy over the K+1 scores).
        normalization: how Z is set for the NCE objective: ``'first_batch'`` (mean(score) x N from the first
            batch, then fixed, as in the reference) or ``'ema'`` (a moving average, momentum ``z_momentum``).
        z_momentum: momentum of the moving average of Z (0.99).
        shared_negatives: one set of K negatives per step for the whole batch instead of one per sample.
        memory: ``'bank'`` (N rows per modality) or ``'queue'`` (the last ``queue_size`` embeddings; the
            positive is then the other modality's current embedding).
        queue_size: queue length (default K).
        head_batchnorm: centre the heads' outputs with a BatchNorm before the l2 normalisation (True); False is
            RepDistiller's bare linear head.
        scoring: ``'auto'``, ``'dense'`` or ``'gather'``: how per-sample scores are computed (identical values;
            see :mod:`crossmodal.distill.contrast.objective`).
        seed: seed of the memory initialisation and of the negative sampler (must match on all ranks).

    Examples:
        >>> crd = create_distiller("crd", student.spec, teacher.spec, num_samples=len(dataset))
        >>> result = crd(student(x_b), teacher(x_a), batch["index"])
        >>> (0.8 * result.loss).backward()
    """

    default_weight = 0.8

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, feat_dim: int = 128, num_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, mode: str = "exact", negatives: str = "all",
                 objective: str = "nce", normalization: str = "first_batch", z_momentum: float = 0.99,
                 shared_negatives: bool = False, memory: str = "bank", queue_size: Optional[int] = None,
                 head_batchnorm: bool = True, scoring: str = "auto", seed: int = 0) -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        _check_choice("negatives", negatives, ("all", "other_classes"))
        _check_choice("objective", objective, ("nce", "info_nce"))
        _check_choice("normalization", normalization, ("first_batch", "ema"))
        _check_choice("memory", memory, ("bank", "queue"))
        _check_choice("scoring", scoring, ("auto", "dense", "gather"))
        for name, value in (("feat_dim", feat_dim), ("num_negatives", num_negatives), ("num_samples", num_samples),
                            ("queue_size", 1 if queue_size is None else queue_size)):
            _check_integer(name, value, minimum=1)
        _check_integer("seed", seed, minimum=0)
        _check_number("temperature", temperature, lambda v: v > 0, "a positive number")
        for name, value in (("momentum", momentum), ("z_momentum", z_momentum)):
            _check_number(name, value, lambda v: 0 <= v < 1, "a number in [0, 1)")
        for name, value in (("shared_negatives", shared_negatives), ("head_batchnorm", head_batchnorm)):
            if not isinstance(value, bool):
                raise ConfigError(f"crd: {name} must be true or false, not {value!r}")
        if memory == "queue" and (mode != "exact" or negatives != "all"):
            raise ConfigError("crd: a queue has no row per sample; use mode='exact' and negatives='all' with it")
        self.num_negatives, self.temperature = num_negatives, float(temperature)
        _warn_if_negatives_repeat(num_negatives, num_samples if memory == "bank" else None)
        self.objective, self.normalization, self.z_momentum = objective, normalization, float(z_momentum)
        self.scoring = scoring
        self.embed_student = EmbedHead(student.embed_dim, feat_dim, norm=head_batchnorm)
        self.embed_teacher = EmbedHead(teacher.embed_dim, feat_dim, norm=head_batchnorm)
        if memory == "bank":
            self.student_memory = MemoryBank(num_samples, feat_dim, momentum, seed=seed)
            self.teacher_memory = MemoryBank(num_samples, feat_dim, momentum, seed=seed + 1)
        else:
            size = num_negatives if queue_size is None else queue_size
            self.student_memory = EmbeddingQueue(size, feat_dim, seed=seed)
            self.teacher_memory = EmbeddingQueue(size, feat_dim, seed=seed + 1)
        self.sampler = ContrastSampler(self.student_memory.rows.shape[0], num_negatives, labels=labels, mode=mode,
                                       other_classes=negatives == "other_classes", shared=shared_negatives,
                                       seed=seed)
        # Z for student anchors (against the teacher memory) and for teacher anchors; -1 until estimated. They
        # stay on the device: a step never reads them back (see _normalizer).
        self.register_buffer("z_student", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("z_teacher", torch.tensor(-1.0, dtype=torch.float64))
        self._z_known_set = False  # a training step of this module has set both Z (reset when a state is loaded)

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(embedding=True)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None,
                contrast_index: Optional[torch.Tensor] = None) -> DistillResult:
        """CRD loss of one batch.

        In training mode with gradients enabled, a step also updates the memories (and Z, when it is not yet
        set or is a moving average), gathering from all ranks under torch.distributed. In eval mode or under
        ``torch.no_grad`` the loss is only evaluated: nothing changes, no collective runs, and the negatives
        come from a side generator, so evaluating on a validation split leaves training untouched. (Do not
        wrap CRD in activation checkpointing: a recomputed forward would draw and update again.)

        Args:
            student, teacher: the encoders' outputs on the paired views.
            index: (B,) each sample's row in the transfer set.
            labels: unused (class-aware sampling reads the labels given at construction).
            contrast_index: optional (B, 1 + K) rows to contrast with (column 0 the positive), as
                RepDistiller's ``contrast_idx``; by default they are drawn by the sampler.
        """
        student_anchor = self.embed_student(student.embedding)
        teacher_anchor = self.embed_teacher(teacher.embedding.detach())
        index = index.to(student_anchor.device).long()
        self._check_index(index)
        update = self.training and torch.is_grad_enabled()
        with torch.autocast(student_anchor.device.type, enabled=False):
            sizes = None
            if update and runtime.is_distributed():
                sizes = runtime.gather_sizes(index.shape[0], index.device)
            global_index = runtime.all_gather_rows(index, sizes) if sizes else index
            positives, negatives = self._draw(index, global_index, sizes, contrast_index, update)
            per_sample = self.student_memory.per_sample
            loss_s, positive_score = self._contrast(student_anchor, self.teacher_memory,
                                                    positives if per_sample else teacher_anchor.detach(),
                                                    negatives, self.z_student, update)
            loss_t, _ = self._contrast(teacher_anchor, self.student_memory,
                                       positives if per_sample else student_anchor.detach(),
                                       negatives, self.z_teacher, update)
            self._z_known_set = self._z_known_set or (update and self.objective == "nce")
            if update:  # sizes is None exactly when not distributed, where all_gather_rows returns its input
                self.student_memory.update(global_index, runtime.all_gather_rows(student_anchor.detach(), sizes))
                self.teacher_memory.update(global_index, runtime.all_gather_rows(teacher_anchor.detach(), sizes))
        logs = {"loss_student_anchor": loss_s.detach(), "loss_teacher_anchor": loss_t.detach(),
                "positive_score": positive_score}
        if self.objective == "nce":
            logs.update(z_student=self.z_student.detach().float(), z_teacher=self.z_teacher.detach().float())
        return DistillResult(loss_s + loss_t, logs)

    def _check_index(self, index: torch.Tensor) -> None:
        """Indices on the CPU are checked (one line instead of an indexing error); checking device tensors would
        synchronise every step."""
        if index.device.type == "cpu" and index.numel() and not (
                0 <= int(index.min()) and int(index.max()) < self.num_samples):
            raise ConfigError(f"crd: sample index {int(index.max())} lies outside the transfer set of "
                              f"{self.num_samples} samples (is num_samples the size of the training split?)")

    def _draw(self, index: torch.Tensor, global_index: torch.Tensor, sizes: Optional[list[int]],
              contrast_index: Optional[torch.Tensor], update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if contrast_index is not None:
            contrast_index = contrast_index.to(index.device).long()
            return contrast_index[:, 0], contrast_index[:, 1:]
        if not update:  # evaluation: the same side draws every call, the training generator untouched
            side = torch.Generator(device=index.device).manual_seed(self.sampler.seed + 1)
            return self.sampler.draw(index, generator=side)
        positives, negatives = self.sampler.draw(global_index)
        if sizes is not None:  # keep this rank's slice of the draws made for the whole batch
            start = sum(sizes[: runtime.rank()])
            positives = positives[start:start + index.shape[0]]
            if negatives.dim() == 2:
                negatives = negatives[start:start + index.shape[0]]
        return positives, negatives

    def _contrast(self, anchor: torch.Tensor, memory: nn.Module, positives: torch.Tensor,
                  negatives: torch.Tensor, z: torch.Tensor, update: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One direction: ``anchor`` against ``memory``. ``positives`` are row indices or, for a queue, rows.

        Returns the loss and the mean positive score.
        """
        rows = memory.rows.float()  # the memory stays float32 even if the module is cast to another dtype
        positive_rows = rows.index_select(0, positives) if positives.dim() == 1 else positives.float()
        scoring = choose_scoring(self.scoring, anchor.shape[0], rows.shape[0], self.num_negatives)
        positive, negative, scores_backward = contrast_scores(anchor.detach(), positive_rows, rows, negatives,
                                                              scoring)
        if self.objective == "nce":
            z_value = self._normalizer(z, positive, negative, update)
            loss, grad_positive, grad_negative = nce_objective(positive, negative, self.temperature, z_value,
                                                               self.num_samples)
        else:
            loss, grad_positive, grad_negative = info_nce_objective(positive, negative, self.temperature)
        if anchor.requires_grad and torch.is_grad_enabled():
            grad_anchor = scores_backward(grad_positive, grad_negative)
            loss = AttachGradient.apply(anchor, loss, grad_anchor.to(anchor.dtype))
        return loss, positive.mean()

    @torch.no_grad()
    def _normalizer(self, z: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                    update: bool) -> torch.Tensor:
        """Z, as a scalar tensor on the scores' device: estimated from the first batch (all ranks), then fixed or
        moved as an average; evaluation before any training step uses the batch's own estimate without storing
        it.

        Nothing is read back to the host. Whether ``z`` is set (> 0) is decided on the device by ``torch.where``;
        once a training step of this module has set it (a Python flag, cleared when a state is loaded), a fixed
        Z is returned as it is, without computing the batch's estimate.
        """
        if self._z_known_set and (self.normalization == "first_batch" or not update):
            return z
        batch_mean = mean_exp_score(positive, negative, self.temperature)
        if update:
            batch_mean = runtime.all_reduce_mean(batch_mean, positive.numel() + negative.numel())
        estimate = batch_mean * self.num_samples
        is_set = z > 0
        if self.normalization == "ema" and update:
            kept = z * self.z_momentum + estimate * (1.0 - self.z_momentum)
        else:
            kept = z
        value = torch.where(is_set, kept, estimate)
        if update:
            z.copy_(value)
        return value

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known_set = False  # the loaded Z may be unset; the next training step finds out on the device

    def get_extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state["sampler"])


def _check_integer(name: str, value: Any, minimum: int) -> None:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"crd: {name} must be an integer >= {minimum}, not {value!r}")


def _check_number(name: str, value: Any, valid: Callable[[float], bool], what: str) -> None:
    if not is_finite_number(value) or not valid(value):
        raise ConfigError(f"crd: {name} must be {what}, not {value!r}")


def _warn_if_negatives_repeat(num_negatives: int, num_samples: Optional[int]) -> None:
    """One line on stderr (rank 0) when K is more than half of N (RepDistiller's setting is a third): the
    negatives then repeat samples, and a contrast of K terms over few distinct samples is mostly cost."""
    if num_samples is None or num_negatives * 2 <= num_samples or runtime.rank() != 0:
        return
    import sys

    repeats = num_negatives / num_samples
    what = (f"each anchor's negatives hold every sample about {repeats:.1f} times" if repeats >= 1 else
            f"each anchor's negatives cover {100 * repeats:.0f}% of them")
    print(f"crd: K = {num_negatives} negatives per anchor with N = {num_samples} training samples: {what} "
          f"(RepDistiller: K = 16384 for N = 50,000); consider distill.options.crd.num_negatives <= "
          f"{max(1, num_samples // 3)}", file=sys.stderr)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"crd: {name} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
