"""Which memory rows each CRD anchor is contrasted with: its positive and K negatives.

Draws come from one ``torch.Generator`` on the memory's device, seeded identically on every rank, and are made
for the whole (gathered) batch, so that N processes with batch B draw exactly what one process with batch N x B
draws. Class-aware draws follow RepDistiller's ``CIFAR100InstanceSample``: ``mode='relax'`` takes a random
sample of the anchor's class as its positive, ``other_classes=True`` draws negatives only from other classes
(both with replacement). They index a class-sorted order of the data set instead of per-class index lists.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

from crossmodal.errors import ConfigError

__all__ = ["ContrastSampler"]


class ContrastSampler:
    """Draw positives and negatives for CRD.

    Args:
        num_rows: rows of the memory the draws index (N, or the queue length).
        num_negatives: K.
        labels: (num_rows,) class of each row; needed for ``mode='relax'`` and ``other_classes``.
        mode: ``'exact'`` (the positive is the anchor's own row) or ``'relax'`` (a random same-class row).
        other_classes: draw negatives only from classes other than the anchor's.
        shared: draw one set of K negatives per step for the whole batch.
        seed: seed of the generator (the same on every rank).

    Raises:
        ConfigError: an unknown ``mode``, ``shared`` with ``other_classes``, or labels missing, of the wrong
            length, unlabelled or of a single class where classes are needed.

    Examples:
        >>> sampler = ContrastSampler(num_rows=10, num_negatives=3)
        >>> positives, negatives = sampler.draw(torch.tensor([2, 5]))
        >>> positives, negatives.shape
        (tensor([2, 5]), torch.Size([2, 3]))
        >>> labels = torch.tensor([0, 1] * 5)
        >>> sampler = ContrastSampler(10, 3, labels=labels, other_classes=True)
        >>> _, negatives = sampler.draw(torch.tensor([2, 5]))
        >>> labels[negatives]
        tensor([[1, 1, 1],
                [0, 0, 0]])
    """

    def __init__(self, num_rows: int, num_negatives: int, *, labels: Optional[torch.Tensor] = None,
                 mode: str = "exact", other_classes: bool = False, shared: bool = False, seed: int = 0) -> None:
        if mode not in ("exact", "relax"):
            raise ConfigError(f"crd: mode must be 'exact' or 'relax', not {mode!r}")
        if shared and other_classes:
            raise ConfigError("crd: shared negatives cannot exclude each anchor's own class; "
                              "use shared_negatives=false with negatives='other_classes'")
        self.num_rows, self.num_negatives = int(num_rows), int(num_negatives)
        self.mode, self.other_classes, self.shared, self.seed = mode, other_classes, shared, int(seed)
        self.draws = 0
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[dict[str, Any]] = None
        self.labels = self.order = self.class_start = self.class_count = None
        if mode == "relax" or other_classes:
            self._index_classes(labels)

    def _index_classes(self, labels: Optional[torch.Tensor]) -> None:
        what = "mode='relax'" if self.mode == "relax" else "negatives='other_classes'"
        if labels is None:
            raise ConfigError(f"crd: {what} needs class labels for the transfer set")
        labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
        if labels.numel() != self.num_rows:
            raise ConfigError(f"crd: {labels.numel()} labels for a memory of {self.num_rows} rows")
        if labels.numel() and int(labels.min()) < 0:
            raise ConfigError(f"crd: {what} needs a class for every transfer sample; "
                              f"{int((labels < 0).sum())} are unlabelled")
        counts = torch.bincount(labels)
        if self.other_classes and int(counts.max()) == self.num_rows:
            raise ConfigError("crd: negatives='other_classes' needs at least two classes")
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)
        self.class_count = counts
        self.class_start = torch.cumsum(counts, 0) - counts

    def generator(self, device: torch.device) -> torch.Generator:
        """The sampler's own generator on ``device``, restored from a loaded state or seeded on first use."""
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = torch.Generator(device=device)
            pending = self._pending_state
            if pending is not None and pending["device"] == device.type:
                self._generator.set_state(pending["state"])
            else:
                if pending is not None:
                    warnings.warn(f"crd: the sampler state was saved on {pending['device']} and cannot be "
                                  f"restored on {device.type}; reseeding from the step count instead")
                self._generator.manual_seed(self.seed * 1_000_003 + self.draws)
            self._pending_state = None
        return self._generator

    @torch.no_grad()
    def draw(self, index: torch.Tensor, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positives (B,) and negatives (B, K), or (K,) when shared, for the rows ``index`` (the global batch).

        ``generator`` draws from another generator than the sampler's own, whose state then stays untouched.
        """
        device = index.device
        if generator is None:
            generator = self.generator(device)
            self.draws += 1
        batch, k = index.shape[0], self.num_negatives
        positives = index
        if self.mode == "relax":
            positives = self._same_class(index, generator)
        if self.shared:
            return positives, torch.randint(self.num_rows, (k,), generator=generator, device=device)
        if self.other_classes:
            return positives, self._other_classes(index, generator)
        return positives, torch.randint(self.num_rows, (batch, k), generator=generator, device=device)

    def _class_tables(self, device: torch.device):
        if self.order.device != device:
            self.order, self.labels = self.order.to(device), self.labels.to(device)
            self.class_start, self.class_count = self.class_start.to(device), self.class_count.to(device)
        return self.order, self.labels, self.class_start, self.class_count

    def _same_class(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        order, labels, start, count = self._class_tables(index.device)
        cls = labels[index]
        offset = (torch.rand(index.shape, generator=generator, device=index.device, dtype=torch.float64)
                  * count[cls]).long()
        return order[start[cls] + torch.minimum(offset, count[cls] - 1)]

    def _other_classes(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        order, labels, start, count = self._class_tables(index.device)
        cls = labels[index].unsqueeze(1)
        others = self.num_rows - count[cls]
        uniform = torch.rand((index.shape[0], self.num_negatives), generator=generator, device=index.device,
                             dtype=torch.float64)
        position = torch.minimum((uniform * others).long(), others - 1)
        position = position + (position >= start[cls]).long() * count[cls]  # skip the anchor's class block
        return order[position]

    def state(self) -> dict[str, Any]:
        """What :meth:`load_state` needs to continue the same draws (the step count and the generator state)."""
        state: dict[str, Any] = {"draws": self.draws}
        if self._generator is not None:
            state.update(device=self._generator.device.type, state=self._generator.get_state())
        elif self._pending_state is not None:
            state.update(self._pending_state)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`; the generator state is applied on the next draw on its device."""
        self.draws = int(state["draws"])
        self._generator = None
        # a checkpoint loaded with map_location may have moved the state tensor; set_state takes a CPU one
        self._pending_state = ({"device": state["device"], "state": state["state"].cpu()} if "state" in state
                               else None)
