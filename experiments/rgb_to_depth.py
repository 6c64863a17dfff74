"""RGB -> depth: a depth student initialised randomly or by KD, FitNet, AT, CRD, CRD+KD from an RGB teacher, then
segmentation transfer (fine-tuned, as the paper, and over the frozen encoder) and a linear probe.

    python experiments/rgb_to_depth.py                       # synthetic scenes, CPU preset (~40 min, 2 cores)
    python experiments/rgb_to_depth.py --preset gpu          # larger scenes and schedules, for one GPU
    python experiments/rgb_to_depth.py --data nyu.h5 --segment-labels seg13 --class-labels scene
    python experiments/rgb_to_depth.py --nyu-mini ../shared/data/nyu_mini   # the real-data path, 10 frames

``--data`` takes a user's NYU-Depth V2 file from ``crossmodal prepare nyu`` (``seg13`` or ``seg40``; its
``scene`` labels give the teacher a classifier, which KD and CRD+KD need). Writes every run and
``OUT/report/report.md`` (tables, plots); finished steps are reused when the command runs again.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

from _study import ROOT, Evaluation, Study, say

from crossmodal.data.format import read_layout

CONFIGS = ROOT / "crossmodal" / "configs"
PRESETS = {
    # the demo's scale: 2,000 scenes of 64 x 64, resnet10t, 10 teacher / 15 student epochs, 8 decoder epochs
    "cpu": {"num": 2000, "size": 64, "teacher_epochs": 10, "student_epochs": 15, "segment_epochs": 8},
    "gpu": {"num": 10000, "size": 96, "teacher_epochs": 30, "student_epochs": 60, "segment_epochs": 30},
}
CRD_BANK = "{feat_dim: 128, num_negatives: 1024, memory: bank, objective: nce, normalization: ema}"
METHODS = {
    "kd": ["distill.name=kd"],
    "fitnet": ["distill.name=fitnet"],
    "at": ["distill.name=at"],
    "crd": [],  # the demo's CRD (crossmodal/configs/demo_distill.yaml): current positives, a queue, InfoNCE
    "crd-bank": [f"distill.options.crd={CRD_BANK}"],  # RepDistiller's memory bank and NCE objective
    "crd+kd": ["distill.name=crd+kd", "distill.options.crd+kd={crd: {feat_dim: 128, num_negatives: 1024, "
                                      "memory: queue, objective: info_nce}}"],
}
NEEDS_LOGITS = ("kd", "crd+kd")


def nyu_mini(source: Path, out: Path) -> Path:
    """The 10 real frames as a paired file: 7 train, 3 test, 120 x 160."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "nyu_mini.h5"
    if not path.exists():
        index = out / "nyu_mini_index.csv"
        with open(source / "index.csv") as handle:
            rows = list(csv.DictReader(handle))
        with open(index, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["frame", "rgb", "depth", "label13", "split"])
            for number, row in enumerate(rows):
                writer.writerow([row["frame"]] + [str((source / row[key]).resolve()) for key in
                                                  ("rgb", "depth", "label13")] + ["train" if number < 7 else "test"])
        subprocess.run([sys.executable, "-m", "crossmodal", "prepare", "pairs", "--src", str(index), "--out",
                        str(path), "--num-classes", "13", "--size", "120", "160"], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--data", help="a paired file with rgb, depth and a segmentation set (default: "
                                       "generated synthetic scenes)")
    parser.add_argument("--segment-labels", default="seg", help="segmentation set (synthetic: seg)")
    parser.add_argument("--class-labels", default="label", help="image-level classes of the teacher and the "
                        "probe, or 'none' (synthetic: label; NYU: scene)")
    parser.add_argument("--nyu-mini", type=Path, help="smoke run on the folder of 10 real NYU frames")
    parser.add_argument("--from-demo", type=Path, metavar="DIR",
                        help="cpu preset, seed 0: start from a finished `crossmodal demo` folder, whose data, "
                             "teacher and CRD student are this study's (same configs, data and seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default=None, help="default runs/experiments/rgb_to_depth[-PRESET|-nyu_mini]")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    classes = None if args.class_labels == "none" else args.class_labels
    if args.nyu_mini:  # a smoke run of the real-data path: no claim from 10 frames
        out = Path(args.out or "runs/experiments/rgb_to_depth-nyu_mini")
        data, classes, seg = nyu_mini(args.nyu_mini, out), None, "seg13"
        preset.update(teacher_epochs=2, student_epochs=2, segment_epochs=2)
        batch = ["train.batch_size=4"]
    else:
        out = Path(args.out or f"runs/experiments/rgb_to_depth-{args.preset}")
        seg = args.segment_labels
        if args.from_demo:
            if args.preset != "cpu" or args.data:
                parser.error("--from-demo goes with the cpu preset on the synthetic scenes")
            out.mkdir(parents=True, exist_ok=True)
            for source, target in (("synthetic.h5", "synthetic.h5"), ("teacher", "teacher-s0"), ("crd", "crd-s0")):
                if not (out / target).exists():
                    copy = shutil.copytree if (args.from_demo / source).is_dir() else shutil.copy2
                    copy(args.from_demo / source, out / target)
        if args.data:
            data = Path(args.data)
        else:
            data = out / "synthetic.h5"
            if not data.exists():
                say(f"generating {preset['num']} synthetic scenes of {preset['size']} px")
                subprocess.run([sys.executable, "-m", "crossmodal", "prepare", "synthetic", "--out", str(data),
                                "--num", str(preset["num"]), "--size", str(preset["size"]), "--seed", "0"],
                               check=True)
        batch = []
    device = [f"device={args.device}", "train.progress=false"]
    task = [f"task.classes={classes or 'null'}", f"task.segmentation={seg}"]
    methods = {name: overrides for name, overrides in METHODS.items() if classes or name not in NEEDS_LOGITS}
    if classes:  # KD's student needs a classifier over the teacher's classes
        count = read_layout(str(data)).labels[classes].num_classes
        methods.update({name: methods[name] + [f"student.encoder.num_classes={count}"] for name in NEEDS_LOGITS})
    if len(methods) < len(METHODS):
        say(f"no class labels: {', '.join(sorted(set(METHODS) - set(methods)))} skipped (they need the "
            f"teacher's logits)")
    study = Study(
        out=str(out), data=str(data.resolve()), student_modality="depth",
        teacher_config=str(CONFIGS / "demo_teacher.yaml"),
        teacher_overrides=[f"data.path={data.resolve()}", f"train.epochs={preset['teacher_epochs']}"]
        + task + device + batch,
        distill_config=str(CONFIGS / "demo_distill.yaml"),
        distill_overrides=[f"data.path={data.resolve()}", f"train.epochs={preset['student_epochs']}"]
        + device + batch,
        methods=methods,
        evaluation=Evaluation(probe_labels=classes, probe_stages=[-1], segment_labels=seg,
                              segment_epochs=preset["segment_epochs"], device=args.device,
                              segment_batch=4 if args.nyu_mini else 32),
        seeds=args.seeds,
        supervised_overrides=[f"data.path={data.resolve()}", f"train.epochs={preset['student_epochs']}",
                              "model.modality=depth", "data.augment=false"] + task + device + batch)
    study.run()


if __name__ == "__main__":
    main()
