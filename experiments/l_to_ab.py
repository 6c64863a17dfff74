"""L -> ab on real CIFAR-10: a luminance teacher, chrominance students by every distiller, linear and kNN probes.

    python experiments/l_to_ab.py --preset quick   # 2,000 training images, 15 epochs: about 1 hour on 2 cores
    python experiments/l_to_ab.py                  # cpu: 10,000 images, 30 epochs: a few hours on 2 cores
    python experiments/l_to_ab.py --preset gpu     # all 50,000 images, resnet18 at full resolution, for one GPU
    python experiments/l_to_ab.py --images stl10.h5   # a user's STL-10 file from `crossmodal prepare stl10`

The teacher is trained on L (``lab_l``) with the class labels. Students on ab (``lab_ab``): random
initialisation (probed as is), supervised with the ab labels (an upper bound), and distilled from the teacher
without labels by KD, FitNet, AT, SP, CC, RKD, PKT, VID, NST, CRD and CRD+KD. Each is probed per stage on the
test split (linear probe and kNN, every choice made on a holdout of the train split). Writes every run and
``OUT/report/report.md``; finished steps are reused when the command runs again.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from _study import ROOT, Evaluation, Study, say

CONFIGS = ROOT / "crossmodal" / "configs"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.zip"
PRESETS = {
    "smoke": {"per_class": 12, "teacher_epochs": 1, "student_epochs": 1, "small_input": False,
              "encoder": "resnet10t", "stages": [-1], "negatives": 64},  # the script's own check, seconds
    # resnet10t with its ImageNet stem on 32 x 32 images: small and fast, weaker than a CIFAR-stem network
    "quick": {"per_class": 200, "teacher_epochs": 30, "student_epochs": 15, "small_input": False,
              "encoder": "resnet10t", "stages": [-2, -1], "negatives": 1024},
    "cpu": {"per_class": 1000, "teacher_epochs": 30, "student_epochs": 30, "small_input": False,
            "encoder": "resnet10t", "stages": None, "negatives": 4096},
    # the paper's scale: CIFAR stem (stride 1), every training image, 240 student epochs as RepDistiller
    "gpu": {"per_class": None, "teacher_epochs": 120, "student_epochs": 240, "small_input": True,
            "encoder": "resnet18", "stages": None, "negatives": 16384},
}
METHODS = ["kd", "fitnet", "at", "sp", "cc", "rkd", "pkt", "vid", "nst", "crd", "crd-bank", "crd+kd"]
NEEDS_LOGITS = ("kd", "crd+kd")


def prepare(out: Path, per_class: int | None, images: Path | None) -> Path:
    if images:
        return images
    path = out / "cifar10.h5"
    if not path.exists():
        say(f"converting CIFAR-10 ({per_class or 'all'} images per class and split) -> {path}")
        command = [sys.executable, "-m", "crossmodal", "prepare", "images", "--src", str(CIFAR), "--out", str(path)]
        subprocess.run(command + (["--max-per-class", str(per_class)] if per_class else []), check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--images", type=Path, help="a paired file with rgb and class labels 'label' "
                                                   "(default: CIFAR-10 from ../shared)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="default runs/experiments/l_to_ab-PRESET")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    out = Path(args.out or f"runs/experiments/l_to_ab-{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(out, preset["per_class"], args.images).resolve()
    encoder = f"{{name: {preset['encoder']}, small_input: {str(preset['small_input']).lower()}}}"
    common = [f"data.path={data}", f"device={args.device}", "train.progress=false"]
    classifier = ["task.classes=label", "task.segmentation=null"]
    methods = {name: [f"distill.name={name.split('-')[0]}"] for name in args.methods}
    negatives = preset["negatives"]
    crd = f"{{feat_dim: 128, num_negatives: {negatives}, memory: queue, objective: info_nce}}"
    options = {"crd": f"distill.options.crd={crd}", "crd+kd": f"distill.options.crd+kd={{crd: {crd}}}",
               # RepDistiller's memory bank and NCE objective
               "crd-bank": f"distill.options.crd={{feat_dim: 128, num_negatives: {negatives}, memory: bank, "
                           f"objective: nce, normalization: ema}}"}
    for name in methods:
        methods[name] += ([options[name]] if name in options else [])
        methods[name] += ["student.encoder.num_classes=10"] if name in NEEDS_LOGITS else []
    study = Study(
        out=str(out), data=str(data), student_modality="lab_ab",
        teacher_config=str(CONFIGS / "demo_teacher.yaml"),
        teacher_overrides=common + classifier + ["model.modality=lab_l", f"model.encoder={encoder}",
                                                 f"train.epochs={preset['teacher_epochs']}"],
        distill_config=str(CONFIGS / "demo_distill.yaml"),
        distill_overrides=common + ["teacher.modality=lab_l", "student.modality=lab_ab",
                                    f"student.encoder={encoder}", f"train.epochs={preset['student_epochs']}"],
        methods=methods,
        evaluation=Evaluation(probe_labels="label", probe_stages=preset["stages"], device=args.device),
        seeds=args.seeds,
        supervised_overrides=common + classifier + ["model.modality=lab_ab", f"model.encoder={encoder}",
                                                    f"train.epochs={preset['student_epochs']}"])
    study.run()


if __name__ == "__main__":
    main()
