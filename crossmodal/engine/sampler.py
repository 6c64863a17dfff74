"""A resumable, distributed batch sampler: the order of an epoch depends only on (seed, epoch)."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from crossmodal import runtime
from crossmodal.errors import ConfigError


def check_batch_size(batch_size: int, num_samples: int) -> None:
    """Every process needs at least one full batch per epoch (``train.batch_size`` samples); checked by the
    builders before any expensive set-up, and by the engine."""
    world = runtime.world_size()
    if -(-num_samples // world) < batch_size:
        raise ConfigError(f"train.batch_size {batch_size} x {world} process(es) exceeds the {num_samples} "
                          f"training samples; lower it")


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one rank's share of a per-epoch permutation, resumable in the middle of an epoch.

    Every epoch draws a permutation of ``range(num_samples)`` from a generator seeded with ``seed + epoch`` (the
    rule of torch's ``DistributedSampler``), pads it by wrapping around to a multiple of ``world_size`` and
    gives rank ``r`` the positions ``r, r + world_size, ...``; those are cut into batches (a short last batch
    is dropped when ``drop_last``). :meth:`set_epoch` chooses the epoch and :meth:`skip` the number of batches
    already done, so that a resumed run sees exactly the batches the interrupted one would have seen.

    Args:
        num_samples: size of the data set.
        batch_size: samples per batch on this rank.
        shuffle: permute (training) or keep the order (evaluation).
        seed: base seed of the permutations.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop a last batch smaller than ``batch_size``.
        pad: wrap around so that every rank gets as many samples (training); without it, ranks may differ by
            one sample and no sample is repeated (evaluation).
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, pad: bool = True) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        self.start_batch = 0

    @property
    def per_rank(self) -> int:
        """Samples of this rank per epoch."""
        if self.pad:
            return -(-self.num_samples // self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank when padding)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch to draw, and how many of its batches to skip (those done before an interruption)."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def indices(self) -> list[int]:
        """This rank's sample positions for the current epoch, before batching."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if not self.pad:
            return order[self.rank::self.world_size]
        total = self.per_rank * self.world_size
        # Pad by wrapping (as often as needed when world_size > num_samples): every rank gets as many samples.
        order = (order * -(-total // len(order)))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for batch in range(self.start_batch, len(self)):
            yield mine[batch * self.batch_size:(batch + 1) * self.batch_size]
