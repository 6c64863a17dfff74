"""C2KD: customised cross-modal distillation through proxy heads, on-the-fly sample selection by Kendall rank
correlation and non-target-class distillation between the proxies (Huo et al., CVPR 2024)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from crossmodal.distill.base import DistillResult, Distiller, stage_pairs
from crossmodal.distill.options import (is_finite_number, is_integer, require_classifiers, require_non_negative,
                                        require_positive, require_positive_int, require_target)
from crossmodal.distill.registry import register_distiller
from crossmodal.errors import ConfigError
from crossmodal.models.outputs import EncoderOutput, FeatureSpec, TeacherNeeds

# Kendall's tau by comparing every pair of classes at once (a B x C x C tensor) while it has at most this many
# elements (B = 64: up to 64 classes); above it, a merge-sort count (see kendall_tau_b).
DIRECT_KENDALL_ELEMENTS = 1 << 18
# the merge count's first blocks, whose inversions are counted by comparing every pair (B x C x width
# comparisons): narrow on a CPU, where comparisons cost time; wide on an accelerator, where each merge level costs
# kernel launches (1000 classes: 5 levels on a CPU, 2 on a GPU)
MERGE_BASE_CPU = 32
MERGE_BASE_ACCELERATOR = 256


class ProxyHead(nn.Module):
    """A C2KD proxy [1]: global average pooling of a stage map, a bias-free linear map (the official 1x1
    convolution on the pooled 1 x 1 map), BatchNorm, LeakyReLU(0.1) and a linear classifier.

    It runs in its parameters' dtype (float32) with autocast off whatever the caller's autocast: it is small,
    and bfloat16 logits would tie often and blur the Kendall rank correlation. With a batch of one in training
    (no batch statistics to take) the running statistics are used, as in eval mode.

    Args:
        in_channels: the stage map's channels.
        hidden: the hidden width (the official proxies keep ``in_channels``).
        num_classes: classifier outputs.
    """

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden, bias=False)
        self.norm = nn.BatchNorm1d(hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        # the official initialisation of the 1x1 convolution (kaiming, fan_out, relu); BatchNorm at 1 / 0 and the
        # classifier at PyTorch's default, as there
        nn.init.kaiming_normal_(self.hidden.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, stage_map: torch.Tensor) -> torch.Tensor:
        dtype = self.hidden.weight.dtype
        with torch.autocast(stage_map.device.type, enabled=False):
            pooled = stage_map.to(dtype).flatten(2).mean(2)
            norm = self.norm
            use_batch = self.training and pooled.shape[0] > 1
            hidden = F.batch_norm(self.hidden(pooled), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                  training=use_batch, momentum=norm.momentum, eps=norm.eps)
            if use_batch:
                norm.num_batches_tracked.add_(1)
            return self.classifier(F.leaky_relu(hidden, 0.1))


def _tied_pairs(changes: torch.Tensor) -> torch.Tensor:
    """Pairs of equal values per row of sorted values, from ``changes`` (... x (C - 1) bool, where each value
    differs from the one before): a run of n equal values holds n (n - 1) / 2 pairs."""
    starts = F.pad(changes, (1, 0), value=True)
    position = torch.arange(starts.shape[-1], device=starts.device)
    run_start = torch.where(starts, position, 0).cummax(-1).values
    return (position - run_start).sum(-1)


def _inversions(values: torch.Tensor) -> torch.Tensor:
    """Per row, the pairs i < j with values[i] > values[j]: within blocks of ``MERGE_BASE_CPU`` (on a CPU) or
    ``MERGE_BASE_ACCELERATOR`` values by comparing every pair, then a bottom-up merge sort whose every level is
    one batched ``searchsorted`` (each right block's elements against its sorted left block) and one sort of the
    merged blocks."""
    batch, length = values.shape
    padded = 1 << (length - 1).bit_length()
    if padded > length:  # +inf at the end: larger than, and after, every real value, so no inversion
        values = torch.cat([values, values.new_full((batch, padded - length), float("inf"))], 1)
    width = min(padded, MERGE_BASE_CPU if values.device.type == "cpu" else MERGE_BASE_ACCELERATOR)
    blocks = values.view(batch, padded // width, width)
    before = torch.ones(width, width, dtype=torch.bool, device=values.device).triu(1)  # i < j
    count = ((blocks[..., :, None] > blocks[..., None, :]) & before).sum((1, 2, 3))
    values = blocks.sort(dim=-1).values.view(batch, padded)
    while width < padded:
        blocks = values.view(batch, padded // (2 * width), 2, width)
        left, right = blocks[:, :, 0].contiguous(), blocks[:, :, 1].contiguous()
        count += (width - torch.searchsorted(left, right, right=True)).sum((1, 2))
        values = values.view(batch, padded // (2 * width), 2 * width).sort(dim=-1).values.view(batch, padded)
        width *= 2
    return count


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kendall's tau-b between the rows of ``x`` and ``y`` (B x C), as ``scipy.stats.kendalltau``:
    (n_c - n_d) / sqrt((n0 - n_x)(n0 - n_y)), n0 = C (C - 1) / 2 pairs, n_x and n_y the pairs tied in x and in y.

    Returns (tau, valid), float64 and bool (B,): a row constant in x or in y has no tau (scipy's nan); its tau is
    0 here and ``valid`` False. While B C^2 <= ``DIRECT_KENDALL_ELEMENTS`` every pair of classes is compared at
    once; larger inputs sort (scipy's algorithm, vectorised over rows): a lexicographic sort by (x, y), then
    n_c - n_d = n0 - n_x - n_y + n_xy - 2 * (inversions of y), n_xy the pairs tied in both, the inversions
    counted by a merge sort. Both are exact. Nothing is differentiable (a rank statistic).
    """
    with torch.no_grad():
        batch, classes = x.shape
        pairs = classes * (classes - 1) // 2
        if batch * classes * classes <= DIRECT_KENDALL_ELEMENTS:
            both = torch.stack([x, y])
            signs = (both[..., :, None] - both[..., None, :]).sign()  # 2 x B x C x C
            score = (signs[0] * signs[1]).sum((1, 2)).double() / 2  # every pair twice; exact integers
            ties_x, ties_y = ((signs == 0).sum((2, 3)) - classes).double() / 2  # less the diagonal
        else:
            y_sorted, order = y.sort(dim=1, stable=True)
            x_sorted, order = x.gather(1, order).sort(dim=1, stable=True)  # by x, then by y among ties in x
            y_by_x = y_sorted.gather(1, order)
            new_x = x_sorted[:, 1:] != x_sorted[:, :-1]
            new_xy = new_x | (y_by_x[:, 1:] != y_by_x[:, :-1])
            ties_x, ties_y, ties_xy = _tied_pairs(torch.stack([new_x, y_sorted[:, 1:] != y_sorted[:, :-1], new_xy]))
            score = (pairs - ties_x - ties_y + ties_xy - 2 * _inversions(y_by_x)).double()
        # a row constant in x (or y) ties every pair there, and its score is then 0 as well
        denominator = ((pairs - ties_x) * (pairs - ties_y)).double().sqrt()
        return score / denominator.clamp_min(1), denominator > 0


def symmetric_kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Per row, sum_c (a_c - b_c) (log a_c - log b_c), with a = exp(log_a) and b = exp(log_b) detached: the value
    of KL(a || b) + KL(b || a) and, where log_a and log_b are log-softmaxes, the gradient of
    KL(detached a || b) + KL(detached b || a), each side pulled towards the other's fixed distribution. (Through a
    log-softmax the gradient of sum_c g_c log b_c is g - b sum_c g_c; with g = -(a - b), which sums to 0, that is
    b - a, the gradient of KL(detached a || b).) One expression for both directions: fewer kernels."""
    return ((log_a.detach().exp() - log_b.detach().exp()) * (log_a - log_b)).sum(-1)


@register_distiller("c2kd")
class C2KD(Distiller):
    """C2KD [0], from its official code [1], with a frozen teacher: proxy heads on both networks, each distilled
    with its network, and non-target-class distillation between the two proxies on the samples whose proxies
    rank the classes alike (on-the-fly selection, OFSD).

    Notation: z_s, z_t the student's and teacher's logits; s', t' the logits of the student's and teacher's
    proxies, each reading its network's ``proxy_stage`` map (``ProxyHead``: pooled, Linear without bias,
    BatchNorm, LeakyReLU(0.1), Linear); p(z) = softmax(z / T); KL(a || b) = sum_c a_c log(a_c / b_c), the first
    argument detached (it is the target); y_i the target class of sample i; q(z) = softmax over the C - 1
    non-target classes of z / T; B the batch size. The loss is

        L = proxy_weight * (L_s + L_t) + ofsd_weight * L_ofsd
        L_s    = T^2 / B * sum_i [ KL(p(z_s,i) || p(s'_i)) + KL(p(s'_i) || p(z_s,i)) ]
        L_t    = T^2 / B * sum_i KL(p(z_t,i) || p(t'_i))
        L_ofsd = T^2 / B * sum_i m_i [ KL(q(t'_i) || q(s'_i)) + KL(q(s'_i) || q(t'_i)) ]
        m_i    = 1 if tau_b(t'_i, s'_i) > krc_threshold else 0

    with tau_b Kendall's rank correlation (tau-b, scipy's ``kendalltau`` as the official code calls it) between
    the two proxies' logits over the classes. In L_s the first term trains the student's proxy towards the
    student, the second the student towards its proxy; in L_ofsd the first term trains the student's proxy
    towards the teacher's, the second the teacher's proxy towards the student's, only on the selected samples.
    The student's proxy reads the student's stage map undetached, so its terms (L_s's first, L_ofsd's first)
    also train the student's layers up to that stage, as in the official code. The student's cross-entropy is
    the trainer's (``loss.ce``).

    The teacher stays frozen. What that changes against [1], where the pretrained teacher trains along: the
    teacher's cross-entropy and the term KL(p(t') || p(z_t)) (the teacher pulled towards its proxy) have no
    trainable parameter left and are dropped; L_t trains the teacher's proxy only, on the frozen teacher's
    ``proxy_stage`` map (the map the official proxy reads: the stage before the last, ResNet-18's layer3) and
    logits; the teacher no longer adapts towards the student, only its proxy does (through L_ofsd), so the
    "customised" teacher knowledge is the teacher proxy's. ``teacher_needs`` is that stage map and the logits.

    Target class y_i (``target``): ``auto`` takes the sample's class label where the batch has one and the
    teacher's argmax (of z_t) elsewhere (label -1, or no labels); ``labels`` the same, but refuses a run without
    class labels; ``teacher`` always the teacher's argmax. The official code uses the ground-truth label; our
    label-free transfer setting has none, and the teacher's prediction stands in.

    Logged: ``proxy_student`` (L_s), ``proxy_teacher`` (L_t), ``ofsd`` (L_ofsd), ``selected`` (the fraction of
    the batch with m_i = 1), ``krc`` (the batch's mean tau_b), ``agreement`` (argmax z_s == argmax z_t).

    Cost: two small heads and, per batch, tau_b on B x C logits, all vectorised and exact: every class pair at
    once while B C^2 <= 2^18 (64 classes at B = 64); above that scipy's sort-based algorithm, batched over rows,
    whose inversion count compares pairs within blocks of 32 values (256 on an accelerator) and then merges them
    in log2(C / 32) levels of one sort and one searchsorted each (1000 classes: 5 levels, 2 on an accelerator,
    over B x 1024 values, instead of a B x 10^6 pair tensor). The four logit sets go through one log-softmax, and
    each two-way KL pair is one expression (:func:`symmetric_kl_rows`), to keep the count of kernels low.

    Departures from the official code:
        - the teacher is frozen (above): two teacher-side terms dropped, the rest train the teacher's proxy only;
        - non-target distributions: the official ``ntkl`` multiplies the target logit by zero and keeps that
          class in the softmax (a target class at logit 0, whose weight depends on the other logits' offset);
          the paper distils "knowledge from non-target classes", and q here is the softmax over the C - 1
          others (a comparison with the official code re-typed, run outside the project, agrees with it to
          1e-16 in float64 once the target is removed there too, and differs from the zeroed version);
        - ``temperature``: the official code has none (T = 1, the default here); another T divides every logit
          and scales every term by T^2;
        - the target class may be the teacher's argmax (above);
        - the proxy runs on the pooled map as Linear + BatchNorm1d (the same function as the official 1x1
          convolution + BatchNorm2d on the 1 x 1 pooled map), in float32, and a batch of one uses the running
          statistics instead of failing;
        - rows where tau_b is undefined (a constant proxy output) are never selected (the official comparison
          with scipy's nan is False too) and count as tau 0 in the ``krc`` log.

    Args:
        student: the student encoder's sizes.
        teacher: the teacher encoder's sizes.
        num_samples: size of the transfer set (unused).
        labels: (N,) class labels of the transfer set (-1 unlabelled) or None; needed by ``target='labels'``.
        temperature: T, a finite positive number; default 1, the official code's plain softmax in every KL.
        krc_threshold: the selection threshold on tau_b, in [-1, 1); default 0, the official ``--krc`` default
            (``ave/``, ``cramed/`` and ``vggsound/main_overlap_tag.py``): samples whose proxies rank the classes
            positively alike.
        proxy_weight: weight of L_s + L_t, a finite number >= 0; default 1, the official code sums every term
            with weight 1.
        ofsd_weight: weight of L_ofsd, a finite number >= 0; default 1 (as ``proxy_weight``).
        proxy_stage: the stage both proxies read, an index into the deepest-aligned stage list
            (:func:`~crossmodal.distill.base.stage_pairs`); default -2, the stage before the last (the official
            proxies read ResNet-18's layer3, ``f4`` in ``model_res.py``).
        proxy_hidden: the proxies' hidden width, a positive integer, or None for each proxy's input channels
            (the official ``conv_1x1_bn(256, 256)``).
        target: ``'auto'``, ``'labels'`` or ``'teacher'`` (above); default ``'auto'``.

    ``default_weight`` is 1: the official loss adds every C2KD term to the student's cross-entropy with weight 1
    (its ``--weight`` option, default 1, is read by no loss term).

    Examples:
        >>> c2kd = C2KD(student_spec, teacher_spec, num_samples=1000)
        >>> result = c2kd(student_out, teacher_out, index, labels)
        >>> result.loss, result.logs["selected"]

    - [0] C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation, Huo et al., CVPR 2024,
      https://openaccess.thecvf.com/content/CVPR2024/html/Huo_C2KD_Bridging_the_Modality_Gap_for_Cross-Modal_Knowledge_Distillation_CVPR_2024_paper.html
    - [1] Official code, https://github.com/huofushuo/C2KD: ``ave/utils/helper.py`` (``train_network_distill``,
      ``ntkl``), ``ave/utils/module.py`` (``Tea``, ``Stu``), ``ave/main_overlap_tag.py`` (options)
    """

    default_weight = 1.0

    def __init__(self, student: FeatureSpec, teacher: FeatureSpec, *, num_samples: int,
                 labels: Optional[torch.Tensor] = None, temperature: float = 1.0, krc_threshold: float = 0.0,
                 proxy_weight: float = 1.0, ofsd_weight: float = 1.0, proxy_stage: int = -2,
                 proxy_hidden: Optional[int] = None, target: str = "auto") -> None:
        super().__init__(student, teacher, num_samples=num_samples, labels=labels)
        classes = require_classifiers(student.num_classes, teacher.num_classes, "c2kd")
        if classes < 2:
            raise ConfigError(f"c2kd needs at least 2 classes (it ranks them and distils the non-target ones), "
                              f"got {classes}")
        self.temperature = require_positive("temperature", temperature, "c2kd")
        if not is_finite_number(krc_threshold) or not -1 <= krc_threshold < 1:
            raise ConfigError(f"c2kd: 'krc_threshold' must be a finite number in [-1, 1), got {krc_threshold!r}")
        self.krc_threshold = float(krc_threshold)
        self.proxy_weight = require_non_negative("proxy_weight", proxy_weight, "c2kd")
        self.ofsd_weight = require_non_negative("ofsd_weight", ofsd_weight, "c2kd")
        depth = min(student.num_stages, teacher.num_stages)
        if not is_integer(proxy_stage) or not -depth <= proxy_stage < depth:
            raise ConfigError(f"c2kd: 'proxy_stage' must be an integer in [{-depth}, {depth - 1}] (the paired "
                              f"encoders have {depth} stages), got {proxy_stage!r}")
        if proxy_hidden is not None:
            require_positive_int("proxy_hidden", proxy_hidden, "c2kd")
        require_target(target, labels is not None, "c2kd")
        if labels is not None and target != "teacher" and labels.numel() and int(labels.max()) >= classes:
            raise ConfigError(f"c2kd: the class labels reach {int(labels.max())} but the classifier heads have "
                              f"{classes} classes")
        self.target = target
        self.proxy_stage = int(proxy_stage)
        self.proxy_hidden = proxy_hidden
        ((self.student_stage, self.teacher_stage),) = stage_pairs(student, teacher, [self.proxy_stage], [-2], "c2kd")
        s_channels, t_channels = student.channels[self.student_stage], teacher.channels[self.teacher_stage]
        self.student_proxy = ProxyHead(s_channels, proxy_hidden or s_channels, classes)
        self.teacher_proxy = ProxyHead(t_channels, proxy_hidden or t_channels, classes)

    def teacher_needs(self) -> TeacherNeeds:
        return TeacherNeeds(stages=frozenset({self.teacher_stage}), logits=True)

    def target_classes(self, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Each sample's target class (B,): its label (when ``target`` is not ``'teacher'`` and the label is not
        -1), else the teacher's argmax."""
        predicted = teacher_logits.argmax(1)
        if labels is None or self.target == "teacher":
            return predicted
        labels = labels.to(predicted.device)
        return torch.where(labels >= 0, labels, predicted)

    def forward(self, student: EncoderOutput, teacher: EncoderOutput, index: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> DistillResult:
        if student.logits is None or teacher.logits is None:
            raise ValueError("c2kd: both student and teacher outputs must carry logits")
        student_proxy = self.student_proxy(student.features[self.student_stage])
        teacher_proxy = self.teacher_proxy(teacher.features[self.teacher_stage].detach())
        dtype = student_proxy.dtype
        teacher_logits = teacher.logits.detach().to(dtype)
        batch, classes = teacher_logits.shape
        # one stack, so that each step of the computation is one kernel for the four: z_s, z_t, s', t'
        logits = torch.stack([student.logits.to(dtype), teacher_logits, student_proxy, teacher_proxy])
        if self.temperature != 1:
            logits = logits / self.temperature
        log_student, log_teacher, log_student_proxy, log_teacher_proxy = logits.log_softmax(-1).unbind(0)
        proxy_student = symmetric_kl_rows(log_student, log_student_proxy)
        proxy_teacher = (log_teacher.exp() * (log_teacher - log_teacher_proxy)).sum(-1)  # a frozen target

        tau, valid = kendall_tau_b(teacher_proxy.detach(), student_proxy.detach())
        selected = valid & (tau > self.krc_threshold)
        # the non-target classes of each row, in class order: position k holds class k, or k + 1 from the target on
        target = self.target_classes(teacher_logits, labels)
        rest = torch.arange(classes - 1, device=target.device).expand(batch, classes - 1)
        rest = rest + (rest >= target[:, None])
        log_q = logits[2:].gather(2, rest.expand(2, batch, classes - 1)).log_softmax(-1).unbind(0)
        ofsd = symmetric_kl_rows(*log_q) * selected.to(dtype)

        parts = torch.stack([proxy_student, proxy_teacher, ofsd]).sum(1) * (self.temperature ** 2 / batch)
        loss = self.proxy_weight * (parts[0] + parts[1]) + self.ofsd_weight * parts[2]
        agreement = (student.logits.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
        parts = parts.detach()
        logs = {"proxy_student": parts[0], "proxy_teacher": parts[1], "ofsd": parts[2],
                "selected": selected.float().mean(), "krc": tau.to(dtype).mean(), "agreement": agreement}
        return DistillResult(loss, logs)
