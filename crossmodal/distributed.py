"""Small torch.distributed helpers that degrade to no-ops in a single process."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def gather_sizes(count: int, device: torch.device) -> list[int]:
    """Every rank's ``count``, in rank order."""
    if not is_distributed():
        return [count]
    local = torch.tensor([count], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(size.item()) for size in sizes]


@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; ranks may hold different row counts.

    No gradient flows through the result. ``sizes`` (from :func:`gather_sizes`) saves one collective when the
    caller already knows every rank's row count.
    """
    if not is_distributed():
        return tensor
    sizes = sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device)
    largest = max(sizes)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


@torch.no_grad()
def all_reduce_mean(value: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Weighted mean of ``value`` over ranks (weight: e.g. the number of elements it averages)."""
    if not is_distributed():
        return value
    weighted = value.detach().double() * weight if weight else torch.zeros((), dtype=torch.float64,
                                                                             device=value.device)
    packed = torch.stack([weighted, torch.tensor(float(weight), dtype=torch.float64, device=value.device)])
    dist.all_reduce(packed)
    return (packed[0] / packed[1]).to(value.dtype)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


@torch.no_grad()
def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (a new tensor; counts and confusion matrices)."""
    value = value.detach().clone()
    if is_distributed():
        dist.all_reduce(value)
    return value
