"""Frozen features for probing: every chosen stage pooled to a fixed size and flattened, plus the embedding.

The per-stage pooling follows the per-layer probes of CMC [0] and CRD [1]: each stage map is adaptively pooled
(average by default, or max) to ``s x s`` and flattened, ``s`` chosen so that a stage has at most
``max_dim`` (8192) values: ``s = max(1, min(H, W, floor(sqrt(max_dim / C))))`` for a ``C x H x W`` map. A deep
512-channel stage is pooled to 4 x 4, a shallow 64-channel one to 11 x 11 (or its own size, when smaller).

- [0] CMC, Tian et al., 2019, https://arxiv.org/abs/1906.05849
- [1] CRD, Tian et al., 2019, https://arxiv.org/abs/1910.10699
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from crossmodal import interrupts
from crossmodal.errors import ConfigError

DEFAULT_MAX_DIM = 8192
EMBEDDING = "embedding"
POOLS = ("avg", "max")


@dataclass
class StageFeatures:
    """The flattened features of one stage (or of the embedding) for every sample.

    Attributes:
        name: the stage index as a string (``"0"`` ..) or ``"embedding"``.
        pooled_size: the side of the pooled map, or None for the embedding (already a vector).
        values: float32 tensor (N, dim), on the evaluation device.
        same_as: stages whose pooled features equal these (e.g. stage 4 pooled to 1 x 1 equals the embedding),
            probed and reported once, here (see :func:`merge_equal_stages`).
    """

    name: str
    pooled_size: Optional[int]
    values: torch.Tensor
    same_as: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


@dataclass
class ExtractedFeatures:
    """Features of one split: per stage (the embedding last), with the class label of every sample."""

    stages: list[StageFeatures]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def restrict_classes(features: ExtractedFeatures, ids: Sequence[int]) -> ExtractedFeatures:
    """The samples of classes ``ids`` only, relabelled 0 .. k-1 in that order (a probe of a class subset).

    Examples:
        >>> kept = restrict_classes(ExtractedFeatures([StageFeatures("embedding", None, torch.eye(3))],
        ...                                           np.array([4, 1, 2])), [2, 4])
        >>> kept.labels.tolist(), kept.stages[0].values.tolist()
        ([1, 0], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    """
    from crossmodal.data.classes import renumbering

    labels = np.asarray(features.labels)
    keep = np.isin(labels, np.asarray(ids))
    index = torch.from_numpy(np.flatnonzero(keep))
    stages = [StageFeatures(stage.name, stage.pooled_size, stage.values[index.to(stage.values.device)],
                            list(stage.same_as)) for stage in features.stages]
    table = renumbering(max(int(labels.max(initial=0)), *ids) + 1, ids)
    return ExtractedFeatures(stages, table[labels[keep]])


def merge_equal_stages(train: ExtractedFeatures, test: ExtractedFeatures) -> None:
    """Drop, in place, every stage whose features equal a later one's on both splits (to float32 rounding),
    naming it in that one's ``same_as``: a stage pooled to 1 x 1 is the embedding, probed once.

    Examples:
        >>> merge_equal_stages(train, test)  # resnet10t at 32 x 32: stage 4 is 512 x 1 x 1
        >>> [(stage.name, stage.same_as) for stage in train.stages]
        [('0', []), ('1', []), ('2', []), ('3', []), ('embedding', ['4'])]
    """
    def equal(first: torch.Tensor, second: torch.Tensor) -> bool:
        return first.shape == second.shape and bool(torch.allclose(first, second, rtol=1e-5, atol=1e-6))

    position = 0
    while position < len(train.stages):
        later = [index for index in range(position + 1, len(train.stages))
                 if equal(train.stages[position].values, train.stages[index].values)
                 and equal(test.stages[position].values, test.stages[index].values)]
        if later:
            for split in (train, test):
                kept = split.stages[later[0]]
                kept.same_as = sorted({*kept.same_as, split.stages[position].name, *split.stages[position].same_as},
                                      key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0))
                del split.stages[position]
        else:
            position += 1


def default_pooled_size(channels: int, height: int, width: int, max_dim: int = DEFAULT_MAX_DIM) -> int:
    """The side ``s`` a ``channels x height x width`` map is pooled to: at most ``max_dim`` values after pooling.

    Examples:
        >>> default_pooled_size(512, 7, 7), default_pooled_size(64, 56, 56), default_pooled_size(96, 4, 4)
        (4, 11, 4)
    """
    return max(1, min(height, width, math.isqrt(max(1, max_dim // max(1, channels)))))


def select_stages(num_stages: int, indices: Optional[Sequence[int]]) -> list[int]:
    """The stage indices to probe, negatives counted from the end; None selects every stage, an empty sequence
    none (the pooled embedding alone is probed).

    Raises:
        ConfigError: an index outside ``-num_stages .. num_stages - 1``.

    Examples:
        >>> select_stages(5, [0, -1]), select_stages(3, None), select_stages(3, [])
        ([0, 4], [0, 1, 2], [])
    """
    if indices is None:
        return list(range(num_stages))
    chosen = []
    for index in indices:
        if not -num_stages <= index < num_stages:
            raise ConfigError(f"--stages: no stage {index}; the encoder has {num_stages} "
                              f"(0 .. {num_stages - 1}, or -{num_stages} .. -1)")
        chosen.append(index % num_stages)
    return list(dict.fromkeys(chosen))


def pool_stage(stage_map: torch.Tensor, pool: str, size: int) -> torch.Tensor:
    """``stage_map`` (B, C, H, W) adaptively pooled to ``size x size`` and flattened to (B, C * size * size)."""
    if pool == "avg":
        pooled = F.adaptive_avg_pool2d(stage_map, size)
    elif pool == "max":
        pooled = F.adaptive_max_pool2d(stage_map, size)
    else:
        raise ConfigError(f"--pool must be one of {list(POOLS)}, got '{pool}'")
    return pooled.flatten(1)


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, batches: Iterable[dict], modality: str, label_name: str,
                     stages: Sequence[int], pool: str = "avg", pooled_size: Optional[int] = None,
                     max_dim: int = DEFAULT_MAX_DIM, device: str | torch.device = "cpu",
                     progress: Optional[str] = None) -> ExtractedFeatures:
    """Run the frozen ``encoder`` (eval mode, no gradients) over ``batches`` once, keeping the chosen stages on
    ``device``.

    Samples whose label is -1 (unlabelled) are dropped.

    Args:
        encoder: an :class:`~crossmodal.models.encoder.Encoder`; it is put in eval mode.
        batches: dicts with ``modality`` (B, C, H, W) and ``label_name`` (B,), e.g. a DataLoader over a
            :class:`~crossmodal.data.PairedDataset` without augmentation.
        modality: the input key of a batch.
        label_name: the class label key of a batch.
        stages: stage indices (non-negative) to keep; the embedding is always added last.
        pool: ``avg`` or ``max`` adaptive pooling.
        pooled_size: the pooled side for every stage (capped at each map's height and width), or None for
            :func:`default_pooled_size` per stage.
        max_dim: the bound of :func:`default_pooled_size`.
        device: where the encoder runs and the features stay.
        progress: a progress bar over the samples on stderr, with this description (None: no bar).

    Examples:
        >>> loader = DataLoader(PairedDataset("s.h5", "train", ["depth"], ["label"]), batch_size=64)
        >>> feats = extract_features(encoder, loader, "depth", "label", stages=[0, 4])
        >>> [(s.name, s.dim) for s in feats.stages]
        [('0', 8192), ('4', 1536), ('embedding', 96)]
    """
    from crossmodal.progress import progress_bar

    encoder.eval().to(device)
    sizes: dict[int, int] = {}
    chunks: dict[str, list[torch.Tensor]] = {str(i): [] for i in stages}
    chunks[EMBEDDING] = []
    labels: list[np.ndarray] = []
    total = len(batches.dataset) if hasattr(batches, "dataset") else None
    with progress_bar(total, progress, unit="sample") as bar:
        for batch in batches:
            interrupts.check()
            batch_labels = torch.as_tensor(batch[label_name]).long()
            bar.update(len(batch_labels))
            keep = batch_labels >= 0
            if not bool(keep.any()):
                continue
            output = encoder(batch[modality][keep].to(device))
            for index in stages:
                stage_map = output.features[index]
                if index not in sizes:
                    # a fixed size never exceeds the map: pooling a 4 x 4 map "to" 8 x 8 only repeats values
                    sizes[index] = (min(pooled_size, *stage_map.shape[2:]) if pooled_size
                                    else default_pooled_size(*stage_map.shape[1:], max_dim=max_dim))
                chunks[str(index)].append(pool_stage(stage_map, pool, sizes[index]).float())
            chunks[EMBEDDING].append(output.embedding.flatten(1).float())
            labels.append(batch_labels[keep].numpy())
    stage_features = []
    for name, parts in chunks.items():
        size = None if name == EMBEDDING else sizes.get(int(name), pooled_size)
        values = torch.cat(parts) if parts else torch.zeros((0, 0), device=device)
        stage_features.append(StageFeatures(name, size, values))
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return ExtractedFeatures(stage_features, all_labels.astype(np.int64))
