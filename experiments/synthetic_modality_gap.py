"""How cross-modal is the synthetic data set? Linear probes on raw pooled pixels of each modality.

Generates the synthetic scenes (seeds below), pools rgb and depth to 16 x 16, and fits a logistic regression
per input on the train split (its regularisation chosen on a held-out fifth of train), then reports test
accuracy overall, on the five shape classes, on the five same-shape cabinets, and for "cabinet or not".
Depth should tell shapes apart and the cabinets not (chance among five is 0.20); RGB the reverse.

Usage: python experiments/synthetic_modality_gap.py [--num 5000] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from crossmodal.data.codecs import read_physical
from crossmodal.data.synthetic import NUM_SHAPE_CLASSES, generate

C_GRID = (0.01, 0.1, 1.0)


def pooled(array: np.ndarray, side: int = 16) -> np.ndarray:
    """(N, S, S, C) -> (N, side * side * C) by average pooling."""
    count, size = array.shape[:2]
    factor = size // side
    return array.reshape(count, side, factor, side, factor, -1).mean(axis=(2, 4)).reshape(count, -1)


def fit(features: np.ndarray, labels: np.ndarray, seed: int) -> LogisticRegression:
    """Logistic regression with C chosen on a held-out fifth of the training rows."""
    order = np.random.default_rng(seed).permutation(len(labels))
    held, fitted = order[: len(order) // 5], order[len(order) // 5:]
    scores = {c: LogisticRegression(C=c, max_iter=3000).fit(features[fitted], labels[fitted])
              .score(features[held], labels[held]) for c in C_GRID}
    return LogisticRegression(C=max(scores, key=scores.get), max_iter=3000).fit(features, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.h5"
        generate(str(path), num=args.num, size=args.size, seed=args.seed)
        with h5py.File(path, "r") as handle:
            rgb = handle["modalities/rgb"][()].astype(np.float32) / 255
            depth = read_physical(handle["modalities/depth"])  # metres
            labels = handle["labels/label"][()]
            train, test = handle["splits/train"][()], handle["splits/test"][()]
    cabinet = labels >= NUM_SHAPE_CLASSES
    print(f"synthetic scenes: {args.num} at {args.size} px, seed {args.seed}; train {len(train)}, test {len(test)}")
    print(f"{'input':<12} {'all 10':>7} {'shapes':>7} {'cabinets':>9} {'cabinet?':>9}")
    for name, raw in (("rgb", rgb), ("depth", depth), ("rgb+depth", np.concatenate([rgb, depth], axis=-1))):
        features = StandardScaler().fit(pooled(raw[train])).transform(pooled(raw))
        model = fit(features[train], labels[train], args.seed)
        predicted = model.predict(features[test])
        correct = predicted == labels[test]
        group = fit(features[train], cabinet[train], args.seed).score(features[test], cabinet[test])
        within = fit(features[train][cabinet[train]], labels[train][cabinet[train]], args.seed)
        cabinets = within.score(features[test][cabinet[test]], labels[test][cabinet[test]])
        print(f"{name:<12} {correct.mean():>7.3f} {correct[~cabinet[test]].mean():>7.3f} {cabinets:>9.3f} "
              f"{group:>9.3f}")


if __name__ == "__main__":
    main()
