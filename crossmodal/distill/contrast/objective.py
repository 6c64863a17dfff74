"""CRD's scores and objectives, computed without materialising B x (K+1) x d memory rows.

RepDistiller gathers the (K+1) memory rows of every anchor (B x (K+1) x d floats, 0.5 GB per bank at the
paper's settings) and lets autograd differentiate a batched matrix product through them. The same numbers come
from one dense product with the whole bank followed by a gather of the (B, K+1) scores (``scoring='dense'``),
and the gradient with respect to the anchors is the transposed product of a scattered (B, N) matrix with the
bank. Both are plain matrix multiplications, an order of magnitude faster than the gather on CPU and GPU while
N stays within a few times K; beyond that the per-sample gather (``'gather'``) is used. With negatives shared
across the batch only K rows are read at all.

The objectives return their loss and its gradient with respect to the scores in closed form, so the whole
contrast step runs outside autograd (in float32, also under autocast) and attaches the anchor gradient
through :class:`AttachGradient`. The memory can therefore be updated in place right after the forward pass.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["AttachGradient", "choose_scoring", "contrast_scores", "info_nce_objective", "mean_exp_score",
           "nce_objective"]

ScoreBackward = Callable[[torch.Tensor], torch.Tensor]
DENSE_MAX_ELEMENTS = 1 << 27     # the (B, N) score matrix of the dense path: at most 512 MB of float32
DENSE_MAX_ROWS_PER_NEGATIVE = 64  # beyond N = 64 K the per-sample gather reads fewer bytes than the product
NCE_EPS = 1e-7  # RepDistiller's ContrastLoss adds it to every denominator; kept so losses match the reference


def choose_scoring(scoring: str, batch: int, bank_rows: int, num_negatives: int) -> str:
    """Resolve ``'auto'`` to ``'dense'`` or ``'gather'`` from the sizes involved; other values pass through.

    Args:
        scoring: ``'auto'``, ``'dense'`` or ``'gather'``.
        batch: anchors B.
        bank_rows: rows M of the memory the negatives index.
        num_negatives: K.

    Returns:
        ``'dense'`` or ``'gather'`` (or ``scoring`` itself unless ``'auto'``).

    Examples:
        >>> choose_scoring("auto", batch=64, bank_rows=50_000, num_negatives=16384)
        'dense'
        >>> choose_scoring("auto", batch=64, bank_rows=1_300_000, num_negatives=4096)
        'gather'
    """
    if scoring != "auto":
        return scoring
    dense_ok = (batch * bank_rows <= DENSE_MAX_ELEMENTS
                and bank_rows <= DENSE_MAX_ROWS_PER_NEGATIVE * num_negatives)
    return "dense" if dense_ok else "gather"


@torch.no_grad()
def contrast_scores(anchor: torch.Tensor, positive_rows: torch.Tensor, bank: torch.Tensor,
                    negatives: torch.Tensor, scoring: str = "dense"
                    ) -> tuple[torch.Tensor, torch.Tensor, ScoreBackward]:
    """Dot products of each anchor with its positive row and with its negative memory rows.

    Args:
        anchor: (B, d) float32 embeddings.
        positive_rows: (B, d) the positive memory row of each anchor.
        bank: (M, d) memory the negatives index.
        negatives: (B, K) per-sample or (K,) shared row indices into ``bank``.
        scoring: for per-sample negatives, ``'dense'`` or ``'gather'`` (see the module docstring).

    Returns:
        The (B,) positive scores, the (B, K) negative scores, and a function that maps the gradients of a loss
        with respect to both to its gradient with respect to ``anchor``. The dense path's function reuses the
        (B, M) score buffer: call it once.

    Examples:
        >>> anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> positive, negative, backward = contrast_scores(anchor, bank[:2], bank, torch.tensor([[1, 2], [0, 2]]))
        >>> positive
        tensor([1., 1.])
        >>> negative
        tensor([[0.0000, 0.6000],
                [0.0000, 0.8000]])
        >>> backward(torch.ones(2), torch.zeros(2, 2))  # the gradient of positive.sum(): the positive rows
        tensor([[1., 0.],
                [0., 1.]])
    """
    positive = (anchor * positive_rows).sum(1)
    if negatives.dim() == 1:
        rows = bank.index_select(0, negatives)
        negative = (rows @ anchor.T).T  # a (K, B) product runs faster than (B, K); the transpose is a view

        def backward_negatives(grad: torch.Tensor) -> torch.Tensor:
            return grad @ rows
    elif scoring == "dense":
        all_scores = anchor @ bank.T
        negative = all_scores.gather(1, negatives)

        def backward_negatives(grad: torch.Tensor) -> torch.Tensor:
            scattered = all_scores.zero_().scatter_add_(1, negatives, grad)  # reuses the (B, N) buffer
            return scattered @ bank
    elif scoring == "gather":
        rows = bank[negatives]
        negative = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)

        def backward_negatives(grad: torch.Tensor) -> torch.Tensor:
            return torch.bmm(grad.unsqueeze(1), rows).squeeze(1)
    else:
        raise ValueError(f"unknown scoring {scoring!r}")

    def backward(grad_positive: torch.Tensor, grad_negative: torch.Tensor) -> torch.Tensor:
        return backward_negatives(grad_negative).addcmul_(grad_positive.unsqueeze(1), positive_rows)

    return positive, negative, backward


@torch.no_grad()
def mean_exp_score(positive: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean(exp(score / T)) over all B x (1 + K) scores, what CRD's normalisation constant is built from.

    Args:
        positive: (B,) positive scores.
        negative: (B, K) negative scores.
        temperature: T.

    Returns:
        The mean as a float64 scalar tensor.

    Examples:
        >>> mean_exp_score(torch.zeros(2), torch.zeros(2, 3), temperature=0.07)
        tensor(1., dtype=torch.float64)
    """
    total = torch.exp(positive * (1.0 / temperature)).sum() + torch.exp(negative * (1.0 / temperature)).sum()
    return total.double() / (positive.numel() + negative.numel())


@torch.no_grad()
def nce_objective(positive: torch.Tensor, negative: torch.Tensor, temperature: float, z: float | torch.Tensor,
                  num_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NCE loss of CRD (its eq. 18 as implemented by RepDistiller's ``ContrastLoss``) and its gradient.

    With P = exp(score / T) / Z, noise c = K / N and RepDistiller's eps = 1e-7, the loss is
    -[log(P_pos / (P_pos + c + eps)) + sum_k log(c / (P_k + c + eps))] summed over anchors and divided by B.
    Written with q = P / c and e = eps / c this is log(1 + (1 + e) / q_pos) + sum_k log(1 + q_k + e). Every
    term is computed directly (no difference of large sums); the tiny e is added as its first-order term
    e / (1 + q), because 1 + e itself would round in float32 with a bias shared by all B x K terms. The gradient
    with respect to a score is (q / (1 + q + e) - [positive]) / T, divided by B.

    Args:
        positive: (B,) float32 positive scores (dot products).
        negative: (B, K) float32 negative scores.
        temperature: T.
        z: the normalisation constant Z, a number or a scalar tensor on the scores' device (CRD keeps it in a
            buffer, so that the step never waits for the device to read it).
        num_samples: N, the size of the data set the negatives are drawn from.

    Returns:
        The scalar loss and its gradients with respect to ``positive`` and ``negative``.

    Examples:
        >>> loss, grad_positive, grad_negative = nce_objective(torch.tensor([0.5]), torch.tensor([[0.5, 0.5]]),
        ...                                                    temperature=0.1, z=1.0, num_samples=2)
        >>> round(float(loss), 3)  # every P is e^5, c = 1: log(1 + 1 / e^5) + 2 log(1 + e^5)
        10.02
        >>> grad_positive.shape, grad_negative.shape
        (torch.Size([1]), torch.Size([1, 2]))
    """
    batch, k = negative.shape
    noise = k / num_samples
    eps = NCE_EPS / noise
    log_scale = _log(z * noise) * temperature  # q = exp((score - log_scale) / T) = P / c
    q_positive = torch.exp((positive - log_scale) * (1.0 / temperature))
    q = negative.sub(log_scale).mul_(1.0 / temperature).exp_()
    one_plus_q = q + 1.0
    grad_negative = q.div_(one_plus_q)  # q / (1 + q): the (1 + e) correction to it is below float32 precision
    negative_terms = one_plus_q.log_().sum().double()
    negative_terms += eps * (grad_negative.numel() - grad_negative.sum().double())  # the sum of e / (1 + q)
    positive_terms = torch.log1p((1.0 + eps) / q_positive).sum().double()
    loss = ((negative_terms + positive_terms) / batch).to(negative.dtype)
    scale = 1.0 / (temperature * batch)
    grad_positive = (q_positive / (q_positive + 1.0) - 1.0).mul_(scale)
    return loss, grad_positive, grad_negative.mul_(scale)


def _log(value: float | torch.Tensor) -> float | torch.Tensor:
    """The natural log of a number (as a float64 number) or of a scalar tensor (as a float64 tensor)."""
    return torch.log(value.double()) if torch.is_tensor(value) else math.log(value)


@torch.no_grad()
def info_nce_objective(positive: torch.Tensor, negative: torch.Tensor, temperature: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The InfoNCE (softmax cross-entropy) form: mean over anchors of -log softmax(scores / T)[positive].

    Args:
        positive: (B,) float32 positive scores.
        negative: (B, K) float32 negative scores.
        temperature: T.

    Returns:
        The scalar loss and its gradients with respect to ``positive`` and ``negative``.

    Examples:
        >>> loss, grad_positive, grad_negative = info_nce_objective(torch.zeros(2), torch.zeros(2, 3), 1.0)
        >>> round(float(loss), 4)  # log 4: the positive is one of four equal scores
        1.3863
        >>> grad_positive
        tensor([-0.3750, -0.3750])
    """
    batch = negative.shape[0]
    logits = torch.cat([positive.unsqueeze(1), negative], 1).mul_(1.0 / temperature)
    log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
    loss = (log_norm.squeeze(1) - logits[:, 0]).mean()
    grad = logits.sub_(log_norm).exp_().mul_(1.0 / (temperature * batch))
    return loss, grad[:, 0] - 1.0 / (temperature * batch), grad[:, 1:]


class AttachGradient(torch.autograd.Function):
    """Return ``loss`` as a function of ``anchor`` whose gradient was computed in closed form beforehand.

    ``AttachGradient.apply(anchor, loss, grad_anchor)`` gives ``loss`` back; its backward pass hands
    ``grad_output x grad_anchor`` to ``anchor`` (no second derivative).

    Examples:
        >>> anchor = torch.ones(2, 3, requires_grad=True)
        >>> loss = AttachGradient.apply(anchor, torch.tensor(5.0), torch.full((2, 3), 0.5))
        >>> (2 * loss).backward()
        >>> anchor.grad
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    @staticmethod
    def forward(ctx, anchor: torch.Tensor, loss: torch.Tensor, grad_anchor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_anchor)
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the closed form has no graph to differentiate again
            raise RuntimeError("CRD's contrast gradient is computed in closed form and has no second "
                               "derivative; double backward (create_graph=True) is not supported")
        (grad_anchor,) = ctx.saved_tensors
        return grad_output * grad_anchor, None, None
