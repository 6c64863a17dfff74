"""The probe's speed: the torch L-BFGS path (the default) against scikit-learn (``--solver sklearn``), side by side.

Two cases, each probed by both paths on the *same* features in one run:

- ``small``: a depth student (resnet10t, CRD from an RGB teacher, the demo's configs with short schedules)
  over 1,500 generated scenes of 64 x 64 (1,200 train, 300 test), every stage and the embedding. The student
  is trained once into ``--out`` and reused; ``--checkpoint RUN`` probes a run of yours instead. The features
  are extracted once (that time is reported, and counted in the small case's total).
- ``large``: 10,000 x 8,192 features of 10 classes (CIFAR-10 scale; 2,000 test rows): real CIFAR-10 images
  from ``../shared`` (luminance, 1,000 train and 200 test images per class) through a randomly initialised
  resnet10t with the CIFAR stem, stage 2 pooled to 8 x 8 (128 x 8 x 8 = 8,192 values; encoded once, about a
  minute, and kept in ``--out``). Real features matter here: their covariance is ill-conditioned, as a
  trained network's is, where a synthetic Gaussian set lets every solver converge in a few dozen steps.

Per stage: the linear probe of each path (its C search on the train holdout, the refit on all of train, the
test score) and the weighted kNN (the same code for both, timed once and added to both). The speed-up is
sklearn's time over torch's, kNN included. The accuracy delta compares the two solvers at one C, not two
searches: the torch solver is refitted at the C that scikit-learn chose, and the test top-1 of both fits are
compared; the largest absolute difference over every stage of both cases is reported.

Run it alone: a busy machine shrinks the ratio (the load average is printed beside the figures). The small
case takes about 10 minutes on 2 cores, most of it scikit-learn; the large case about as long.

Usage: python experiments/bench_probe.py [--out runs/bench_probe] [--checkpoint RUN] [--cases small large]
                                         [--device cpu]
Ends with: probe-speedup small=<x>x large=<x>x; accuracy-delta max=<points>pt
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from crossmodal.eval.knn import knn_probe  # noqa: E402
from crossmodal.eval.probe import linear_probe  # noqa: E402
from crossmodal.runtime import load_average, machine_description  # noqa: E402

SMALL = {"num": 1500, "size": 64, "teacher_epochs": 3, "student_epochs": 3}
LARGE = {"train": 10_000, "test": 2_000, "classes": 10}


def small_features(out: Path, checkpoint: str | None, device: str) -> tuple[dict[str, Any], float, str]:
    """(train and test features per stage, extraction seconds, the checkpoint probed)."""
    from torch.utils.data import DataLoader

    from crossmodal.data import PairedDataset
    from crossmodal.shipped_configs import shipped_path as config_path
    from crossmodal.eval.checkpoints import load_encoder
    from crossmodal.eval.features import extract_features, merge_equal_stages, select_stages
    from crossmodal.pipeline import train_or_reuse

    data = out / "synthetic.h5"
    if not data.exists():
        from crossmodal.data.synthetic import generate

        generate(str(data), num=SMALL["num"], size=SMALL["size"], seed=0)
    if checkpoint is None:
        common = ["seed=0", "device=cpu", "train.progress=false", f"data.path={data}"]
        teacher = train_or_reuse("train-teacher", config_path("demo_teacher"),
                                 common + [f"train.epochs={SMALL['teacher_epochs']}"], str(out / "teacher"))
        checkpoint = train_or_reuse("distill", config_path("demo_distill"),
                                    common + [f"teacher.weights={teacher}", f"train.epochs={SMALL['student_epochs']}"],
                                    str(out / "crd"))
    loaded = load_encoder(checkpoint)
    stages = select_stages(len(loaded.encoder.spec.channels), None)
    start = time.perf_counter()
    splits = {}
    for split in ("train", "test"):
        dataset = PairedDataset(str(data), split, modalities=[loaded.modality or "depth"], labels=["label"])
        splits[split] = extract_features(loaded.encoder, DataLoader(dataset, batch_size=64), loaded.modality or "depth",
                                         "label", stages, device=device)
    merge_equal_stages(splits["train"], splits["test"])
    return splits, time.perf_counter() - start, checkpoint


def large_features(out: Path, device: str) -> dict[str, Any]:
    """Real CIFAR-10 features: the luminance of 1,000 train images per class (10,000) and 200 test images per
    class (2,000) from ``../shared/data/cifar10``, through a randomly initialised resnet10t (CIFAR stem, seed 0),
    stage 2 (128 x 8 x 8 = 8,192 values). Computed once, kept in ``out``."""
    from safetensors.torch import load_file, save_file

    from crossmodal.eval.features import ExtractedFeatures, StageFeatures

    path = out / "large_features.safetensors"
    if not path.exists():
        arrays = _encode_cifar()
        save_file(arrays, str(path))
    arrays = load_file(str(path))
    return {split: ExtractedFeatures([StageFeatures("2", 8, arrays[f"{split}_x"].to(device))],
                                     arrays[f"{split}_y"].numpy())
            for split in ("train", "test")}


def _encode_cifar() -> dict[str, torch.Tensor]:
    import io
    import zipfile

    from PIL import Image

    from crossmodal.eval.features import pool_stage
    from crossmodal.models import Encoder

    archive = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.zip"
    if not archive.exists():
        raise SystemExit(f"{archive}: missing; the large case reads CIFAR-10 from ../shared")
    with zipfile.ZipFile(archive) as handle:
        names = sorted(name for name in handle.namelist() if name.endswith(".jpg"))
        arrays = {}
        for split, per_class in (("train", LARGE["train"] // 10), ("test", LARGE["test"] // 10)):
            chosen, labels = [], []
            classes = sorted({name.split("/")[2] for name in names if name.split("/")[1] == split})
            for index, name in enumerate(classes):
                members = [item for item in names if item.split("/")[1] == split and item.split("/")[2] == name]
                chosen += members[:per_class]
                labels += [index] * len(members[:per_class])
            images = np.stack([np.asarray(Image.open(io.BytesIO(handle.read(item))).convert("L"), np.float32)
                               for item in chosen]) / 255.0
            arrays[split] = (torch.from_numpy(images)[:, None], torch.tensor(labels))
    torch.manual_seed(0)
    encoder = Encoder("resnet10t", in_chans=1, small_input=True).eval()
    encoded = {}
    with torch.no_grad():
        for split, (images, labels) in arrays.items():
            parts = []
            for start in range(0, len(images), 250):
                maps = encoder.model.forward_intermediates((images[start:start + 250] - 0.5) / 0.25, indices=[2],
                                                           intermediates_only=True, stop_early=True)
                parts.append(pool_stage(maps[-1], "avg", 8))
            encoded[f"{split}_x"], encoded[f"{split}_y"] = torch.cat(parts).contiguous(), labels
    return encoded


def compare(case: str, splits: dict[str, Any], device: str) -> tuple[float, float, float, list[dict]]:
    """Per stage: both paths' linear probe, kNN once, the solvers at sklearn's C. Returns (torch seconds,
    sklearn seconds, largest accuracy delta in points, rows)."""
    train, test = splits["train"], splits["test"]
    rows = []
    for train_stage, test_stage in zip(train.stages, test.stages):
        x, query = train_stage.values, test_stage.values
        fast = linear_probe(x, train.labels, query, test.labels, device=device)
        knn = knn_probe(x, train.labels, query, test.labels)
        reference = linear_probe(x.cpu(), train.labels, query.cpu(), test.labels, solver="sklearn")
        same_c = linear_probe(x, train.labels, query, test.labels, device=device, c=reference.chosen["C"])
        row = {"stage": train_stage.name + (f" (= {', '.join(train_stage.same_as)})" if train_stage.same_as else ""),
               "dim": train_stage.dim, "torch_s": fast.seconds + knn.seconds,
               "sklearn_s": reference.seconds + knn.seconds, "knn_s": knn.seconds,
               "torch_top1": fast.top1, "torch_C": fast.chosen["C"], "torch_converged": fast.converged,
               "sklearn_top1": reference.top1, "sklearn_C": reference.chosen["C"],
               "sklearn_converged": reference.converged,
               "delta_pt": 100 * abs(same_c.top1 - reference.top1)}
        rows.append(row)
        print(f"  {case} stage {row['stage']}: torch {row['torch_s']:.1f} s, sklearn {row['sklearn_s']:.1f} s "
              f"({load_average()})", flush=True)
    torch_total = sum(row["torch_s"] for row in rows)
    sklearn_total = sum(row["sklearn_s"] for row in rows)
    return torch_total, sklearn_total, max(row["delta_pt"] for row in rows), rows


def print_table(case: str, rows: list[dict]) -> None:
    print(f"\n{case}: per stage (seconds include kNN; top-1 %, each path with its own C; delta at sklearn's C)")
    print("| stage | dim | torch s | sklearn s | speed-up | torch top-1 (C) | sklearn top-1 (C) | delta at one C |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        flags = ("" if row["torch_converged"] else " *") , ("" if row["sklearn_converged"] else " *")
        print(f"| {row['stage']} | {row['dim']} | {row['torch_s']:.1f} | {row['sklearn_s']:.1f} | "
              f"{row['sklearn_s'] / row['torch_s']:.0f}x | {100 * row['torch_top1']:.1f} ({row['torch_C']:.2g}){flags[0]} | "
              f"{100 * row['sklearn_top1']:.1f} ({row['sklearn_C']:.2g}){flags[1]} | {row['delta_pt']:.2f} pt |")
    print("(* the final fit stopped at its iteration cap)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_probe"))
    parser.add_argument("--checkpoint", help="probe this run folder or .safetensors in the small case")
    parser.add_argument("--cases", nargs="+", choices=("small", "large"), default=["small", "large"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench_probe: device {args.device}, {machine_description()}", flush=True)
    speedups, deltas = {}, []
    for case in args.cases:
        if case == "small":
            splits, encode_s, checkpoint = small_features(out, args.checkpoint, args.device)
            print(f"small: {checkpoint} over {SMALL['num']} scenes of {SMALL['size']} px; features extracted "
                  f"in {encode_s:.1f} s", flush=True)
        else:
            splits, encode_s = large_features(out, args.device), 0.0
            print(f"large: {LARGE['train']} x {splits['train'].stages[0].dim} CIFAR-10 train features (random "
                  f"resnet10t, stage 2), {LARGE['test']} test, {LARGE['classes']} classes", flush=True)
        torch_s, sklearn_s, delta, rows = compare(case, splits, args.device)
        print_table(case, rows)
        print(f"{case}: torch path {torch_s:.1f} s, sklearn path {sklearn_s:.1f} s, speed-up "
              f"{sklearn_s / torch_s:.1f}x; whole probe with the torch path (encoding + every stage + kNN) "
              f"{encode_s + torch_s:.1f} s; {load_average()}", flush=True)
        speedups[case] = sklearn_s / torch_s
        deltas.append(delta)
    print("probe-speedup " + " ".join(f"{case}={value:.1f}x" for case, value in speedups.items())
          + f"; accuracy-delta max={max(deltas):.2f}pt")


if __name__ == "__main__":
    main()
