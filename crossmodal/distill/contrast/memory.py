"""The memories CRD contrasts against: an N-row bank with momentum updates, or a fixed-size queue.

Both take the update of the whole gathered batch (indices and embeddings from every rank, in rank order), so
the memory is identical on all ranks of a distributed run; both live in buffers, so checkpoints hold them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingQueue", "MemoryBank"]


def _uniform_rows(num_rows: int, dim: int, seed: int) -> torch.Tensor:
    """RepDistiller's initialisation: uniform in [-1/sqrt(d/3), 1/sqrt(d/3)] (rows of unit expected norm)."""
    bound = 1.0 / math.sqrt(dim / 3)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_rows, dim, generator=generator).mul_(2 * bound).sub_(bound)


class MemoryBank(nn.Module):
    """One row per transfer sample; the rows of a batch move as normalize(m x row + (1 - m) x embedding).

    Args:
        num_rows: N.
        dim: embedding size d.
        momentum: m (RepDistiller: 0.5).
        seed: seed of the initial rows (the same on every rank).

    Examples:
        >>> bank = MemoryBank(num_rows=4, dim=3)
        >>> bank.rows.shape
        torch.Size([4, 3])
        >>> bank.update(torch.tensor([1, 3]), F.normalize(torch.ones(2, 3), dim=1))
        >>> torch.allclose(bank.rows[[1, 3]].norm(dim=1), torch.ones(2))
        True
    """

    per_sample = True

    def __init__(self, num_rows: int, dim: int, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("rows", _uniform_rows(num_rows, dim, seed))

    @torch.no_grad()
    def update(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Move rows ``index`` (B,) towards ``embeddings`` (B, d); of repeated indices the last one counts.

        Runs on the device without a host read: every position computes its mixed row, then takes the one
        computed at the last occurrence of its index, so repeated indices copy identical values and the order
        in which ``index_copy_`` writes them does not matter.
        """
        mixed = self.rows.index_select(0, index).mul_(self.momentum).add_(embeddings.to(self.rows.dtype),
                                                                          alpha=1.0 - self.momentum)
        updated = F.normalize(mixed, dim=1).index_select(0, last_occurrence(index, self.rows.shape[0]))
        self.rows.index_copy_(0, index, updated)


def last_occurrence(index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """For each position of ``index`` (B,), the last position that holds the same value (itself if none later).

    A scatter of the positions into a ``num_rows`` buffer with ``amax`` and a gather back: a fixed number of
    kernels whatever the duplicates, no sort and no host read (``torch.unique`` and a branch on its size would
    wait for the device). Only the scattered entries of the buffer are read, so it needs no initialisation.

    Examples:
        >>> last_occurrence(torch.tensor([5, 5, 6, 5, 7]), num_rows=8)
        tensor([3, 3, 2, 3, 4])
    """
    index = index.long()
    positions = torch.arange(index.numel(), device=index.device)
    last = torch.empty(num_rows, dtype=torch.long, device=index.device)
    last.scatter_reduce_(0, index, positions, reduce="amax", include_self=False)
    return last.index_select(0, index)


class EmbeddingQueue(nn.Module):
    """The last ``size`` embeddings, first in first out (for transfer sets too large for two N x d banks).

    A queue has no row per sample, so an anchor's positive is the paired embedding of the current step.

    Args:
        size: number of rows kept.
        dim: embedding size d.
        seed: seed of the initial rows (the same on every rank).

    Examples:
        >>> queue = EmbeddingQueue(size=4, dim=2)
        >>> queue.update(torch.tensor([7, 8, 9]), torch.ones(3, 2))
        >>> int(queue.head)
        3
        >>> queue.rows[:3]
        tensor([[1., 1.],
                [1., 1.],
                [1., 1.]])
    """

    per_sample = False

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("rows", _uniform_rows(size, dim, seed))
        self.register_buffer("head", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Enqueue ``embeddings`` (B, d) over the oldest rows; ``index`` is unused (the bank's signature)."""
        size = self.rows.shape[0]
        embeddings = embeddings[-size:].to(self.rows.dtype)
        slots = (self.head + torch.arange(embeddings.shape[0], device=self.rows.device)) % size
        self.rows.index_copy_(0, slots, embeddings)
        self.head.copy_((self.head + embeddings.shape[0]) % size)
