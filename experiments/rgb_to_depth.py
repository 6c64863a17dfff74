"""RGB -> depth: depth students from an RGB teacher by KD, FitNet, AT, CRD (ours and RepDistiller's recipe) and
CRD+KD, judged by segmentation transfer and probes of labels the teacher never saw.

    python experiments/rgb_to_depth.py                 # synthetic scenes, cpu preset, seeds 0 1 2 (~94 min, 2 cores)
    python experiments/rgb_to_depth.py --preset gpu    # larger scenes and schedules, for one GPU
    python experiments/rgb_to_depth.py --data nyu.h5 --segment-labels seg13 --class-labels scene
    python experiments/rgb_to_depth.py --nyu-mini ../shared/data/nyu_mini --protocol seen-labels --seeds 0
    python experiments/rgb_to_depth.py --protocol seen-labels   # the previous releases' protocol
    python experiments/rgb_to_depth.py --protocol pretrained-teacher   # ImageNet EfficientNet-Lite0 as the teacher
    python experiments/rgb_to_depth.py --protocol supervised-student   # CE on depth labels + one distiller each

Protocol ``unseen-labels`` (default): the RGB teacher learns the image classes of half the classes
(``--teacher-classes``; default every other class) and never the segmentation; depth students are distilled
from it without labels (KD and CRD+KD over its subset outputs) and judged by segmentation transfer and by linear
and kNN probes of the held-out classes (and of all classes). ``supervised`` is an oracle trained on the
evaluation's labels, ``scratch`` the random initialisation. Protocol ``seen-labels``: the teacher learns every
class and the segmentation the students are judged on. Protocol ``pretrained-teacher`` (the paper's setting):
the teacher is ImageNet EfficientNet-Lite0 (``crossmodal import-teacher efficientnet-lite``, fed 224 px), frozen,
which never saw the scenes; students are judged on every class, on the five shape classes depth can see (the
five cabinets differ only in colour) and by segmentation transfer, beside two references: the teacher's own
features probed on RGB, and its network initialised from ImageNet with the first convolution summed for depth.
Protocol ``supervised-student``: that teacher with a linear head over the image classes fitted on RGB; depth
students trained with cross-entropy on the depth labels plus one distiller each (CE alone, KD, DKD, MLLD, C2KD,
FitNet, CRD), judged by their test top-1 and the frozen-encoder segmentation transfer.

``--data`` takes a user's NYU-Depth V2 file from ``crossmodal prepare nyu`` (``seg13`` or ``seg40``; its
``scene`` labels give the teacher its classes). Writes every run, ``OUT/report/report.md`` (tables, plots) and
``OUT/report/study.md`` (mean ± std over seeds, paired comparisons); finished steps are reused when the command
runs again, and the last line printed is ``study PROTOCOL [...]: METHOD=mean±std (n seeds) ...; wall=..min``.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from _study import ROOT, Evaluation, Pretrained, Study, guarded, say, shared_teacher_cache

from _protocol import (SUPERVISED_METHODS, SUPERVISED_TOP1, Headline, StudyError, add_protocol_arguments,
                       check_label_set, check_supervised_methods, plan_classes, supervised_methods)

from crossmodal.data.format import read_layout


CONFIGS = ROOT / "crossmodal" / "configs"
PRESETS = {
    # 2,000 scenes of 48 x 48 (the demo's generator and seed, smaller pictures), resnet10t, 10 teacher and
    # 10 student epochs, 8 decoder epochs over the frozen encoder: three seeds in 94 min on 2 shared cores
    "cpu": {"num": 2000, "size": 48, "teacher_epochs": 10, "student_epochs": 10, "segment_epochs": 8,
            "segment_protocols": ["frozen"]},
    # the script's own check, seconds; on the device-resident loader, as the gpu preset (on the CPU here)
    "smoke": {"num": 200, "size": 32, "teacher_epochs": 1, "student_epochs": 1, "segment_epochs": 1,
              "segment_protocols": ["frozen"], "segment_loader": "device", "extra": ["data.loader=device"]},
    # 10,000 scenes of 64 x 64, sized to finish three seeds in about 10 minutes on one GPU: the data held and
    # augmented on the device, batch 256, KD, CRD and CRD+KD, the frozen-encoder segmentation transfer
    "gpu": {"num": 10000, "size": 64, "teacher_epochs": 15, "student_epochs": 15, "segment_epochs": 10,
            "segment_protocols": ["frozen"], "methods": ["kd", "crd", "crd+kd"], "segment_loader": "device",
            "extra": ["data.loader=device", "train.batch_size=256", "optim.lr=0.2", "train.bf16=true"]},
}
OURS = "{feat_dim: 128, num_negatives: 1024, memory: queue, objective: info_nce}"  # the demo's CRD recipe
REPDISTILLER = ("{feat_dim: 128, num_negatives: 1024, memory: bank, objective: nce, normalization: first_batch, "
                "head_batchnorm: false}")
ALL_METHODS = {
    "kd": ["distill.name=kd"],
    "fitnet": ["distill.name=fitnet"],
    "at": ["distill.name=at"],
    "crd": [],  # the demo's CRD (crossmodal/configs/demo_distill.yaml): current positives, a queue, InfoNCE
    "crd-repdistiller": [f"distill.options.crd={REPDISTILLER}"],  # RepDistiller's bank, NCE and bare heads
    "crd+kd": ["distill.name=crd+kd", f"distill.options.crd+kd={{crd: {OURS}}}"],
}
QUEUE = "memory: queue, objective: info_nce"
# Variants of our CRD, to find out what limits it (the README's pretrained-teacher section): temperature, negatives,
# head and epochs, each one change from the demo's recipe (feat_dim 128, 1,024 negatives, T 0.07, BN heads)
ALL_METHODS.update({
    "crd-t0.2": [f"distill.options.crd={{feat_dim: 128, num_negatives: 1024, {QUEUE}, temperature: 0.2}}"],
    "crd-k256": [f"distill.options.crd={{feat_dim: 128, num_negatives: 256, {QUEUE}}}"],
    "crd-bare-head": [f"distill.options.crd={{feat_dim: 128, num_negatives: 1024, {QUEUE}, head_batchnorm: false}}"],
    "crd-2x-epochs": ["train.epochs=20"],
})
# CRD on a student of the teacher's architecture initialised from ImageNet (first convolution summed for depth), at
# the recipe's learning rate and at a tenth of it (a rate for a pretrained encoder)
IMAGENET_INIT = {"crd-imagenet-init": [], "crd-imagenet-init-lr0.01": ["optim.lr=0.01"]}
# AT, the weakest in the previous release's table, is left out of the default to fit three seeds on 2 cores
DEFAULT_METHODS = ["kd", "fitnet", "crd", "crd-repdistiller", "crd+kd"]
NEEDS_LOGITS = ("kd", "crd+kd")
# The synthetic scenes' classes told apart by shape, which depth can see (the five cabinets differ only in colour)
SHAPE_CLASSES = ["box", "ball", "barrel", "table", "cone"]


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
    add_protocol_arguments(parser)
    parser.add_argument("--data", help="a paired file with rgb, depth and a segmentation set (default: "
                                       "generated synthetic scenes)")
    parser.add_argument("--segment-labels", default="seg", help="segmentation set (synthetic: seg)")
    parser.add_argument("--class-labels", default="label", help="image-level classes of the teacher and the "
                        "probe, or 'none' (synthetic: label; NYU: scene)")
    parser.add_argument("--segment-protocols", nargs="+", choices=("finetune", "frozen"),
                        help="segmentation transfer protocols (default: the preset's)")
    parser.add_argument("--nyu-mini", type=Path, help="smoke run on the folder of 10 real NYU frames (they "
                                                      "carry no image classes: --protocol seen-labels)")
    parser.add_argument("--methods", nargs="+", choices=dict.fromkeys([*ALL_METHODS, *IMAGENET_INIT,
                                                                       *SUPERVISED_METHODS]),
                        help=f"default: {DEFAULT_METHODS} (supervised-student: {list(SUPERVISED_METHODS)})")
    parser.add_argument("--out", default=None, help="default runs/experiments/rgb_to_depth-PRESET[-seen-labels] "
                                                    "(or -nyu_mini)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-size", type=int, metavar="PX", help="pretrained-teacher: the teacher's input "
                                                                       "size (default: its own, 224)")
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    classes = None if args.class_labels == "none" else args.class_labels
    supervised = args.protocol == "supervised-student"
    if supervised:
        check_supervised_methods(args.methods)
    pretrained = args.protocol in ("pretrained-teacher", "supervised-student")
    suffix = "" if args.protocol == "unseen-labels" else f"-{args.protocol}"
    if args.nyu_mini:  # a smoke run of the real-data path: no claim from 10 frames
        if args.protocol == "unseen-labels":
            parser.error("--nyu-mini: the 10 frames carry no image classes for the teacher; add --protocol "
                         "seen-labels")
        out = Path(args.out or "runs/experiments/rgb_to_depth-nyu_mini")
        data, classes, seg = nyu_mini(args.nyu_mini, out), None, "seg13"
        preset.update(teacher_epochs=2, student_epochs=2, segment_epochs=2, segment_protocols=["finetune", "frozen"])
        batch = ["train.batch_size=4"]
    else:
        out = Path(args.out or f"runs/experiments/rgb_to_depth-{args.preset}{suffix}")
        seg = args.segment_labels
        if args.data:
            data = Path(args.data)
        else:
            data = out / "synthetic.h5"
            if not data.exists():
                out.mkdir(parents=True, exist_ok=True)
                say(f"generating {preset['num']} synthetic scenes of {preset['size']} px")
                subprocess.run([sys.executable, "-m", "crossmodal", "prepare", "synthetic", "--out", str(data),
                                "--num", str(preset["num"]), "--size", str(preset["size"]), "--seed", "0"],
                               check=True)
        batch = list(preset.get("extra", []))
    data = data.resolve()
    check_label_set(str(data), seg, "segmentation", "--segment-labels")
    plan = plan_classes(args, str(data), classes, say)
    if pretrained and classes and set(SHAPE_CLASSES) <= set(read_layout(str(data)).labels[classes].class_names):
        plan.visible, plan.visible_label = SHAPE_CLASSES, "shape"
    device = [f"device={args.device}", "train.progress=false"]
    # unseen-labels: image classes of a subset only, never the segmentation; seen-labels: every label
    teacher_task = plan.teacher_task() + [f"task.segmentation={'null' if plan.unseen else seg}"]
    oracle_task = [f"task.classes={classes or 'null'}", f"task.segmentation={seg}"]
    names = [] if supervised else args.methods or preset.get("methods", DEFAULT_METHODS)
    methods = {name: list(ALL_METHODS[name]) for name in names
               if name in ALL_METHODS and (classes or pretrained or name not in NEEDS_LOGITS)}
    for name in set(names) & set(IMAGENET_INIT):  # the teacher's network from ImageNet, then CRD
        if not pretrained:
            raise StudyError(f"--methods {name}: initialises from the imported teacher, under --protocol "
                             f"pretrained-teacher")
        methods[name] = [f"student.weights={out.resolve() / 'teacher-pretrained-rgb' / 'teacher.safetensors'}",
                         "student.adapt_input=true", "student.encoder={name: tf_efficientnet_lite0}",
                         *IMAGENET_INIT[name]]
    methods.update({name: methods[name] + [f"student.encoder.num_classes={plan.num_classes}"]
                    for name in NEEDS_LOGITS if name in methods})  # KD's student: the teacher's classes
    if len(methods) < len(names):
        say(f"no class labels: {', '.join(sorted(set(names) - set(methods)))} skipped (they need the "
            f"teacher's logits)")
    if supervised:  # cross-entropy on the depth labels plus one distiller each, from the teacher with its head
        methods = supervised_methods(classes, OURS, preset["student_epochs"], args.methods)
    protocols = args.segment_protocols or preset["segment_protocols"]
    headlines = [Headline(f"{protocol} mIoU", "segment", protocol, "miou") for protocol in protocols]
    if supervised:
        headlines = [SUPERVISED_TOP1, *headlines]
    study = Study(
        out=str(out), data=str(data), student_modality="depth",
        teacher_config=str(CONFIGS / "demo_teacher.yaml"),
        teacher_overrides=[f"data.path={data}", f"train.epochs={preset['teacher_epochs']}"]
        + teacher_task + device + batch,
        distill_config=str(CONFIGS / "demo_distill.yaml"),
        distill_overrides=[f"data.path={data}", f"train.epochs={preset['student_epochs']}"] + device + batch
        + (shared_teacher_cache(out) if pretrained else []),
        methods=methods,
        evaluation=Evaluation(probe_labels=None if supervised else classes, probe_sets=plan.probe_sets(), probe_stages=[-1],
                              segment_labels=seg, segment_protocols=protocols,
                              segment_epochs=preset["segment_epochs"], device=args.device,
                              segment_batch=4 if args.nyu_mini else 32,
                              segment_loader=preset.get("segment_loader", "workers")),
        protocol=args.protocol,
        setting={"preset": "nyu-mini" if args.nyu_mini else args.preset, "data": str(data),
                 "teacher_classes": plan.teacher, "class_labels": classes, "segment_labels": seg,
                 "segment_protocols": sorted(protocols), **({"teacher_size": args.teacher_size} if pretrained else {})},
        headlines=headlines if supervised else headlines + plan.headlines("embedding", knn_on_all=False),
        seeds=args.seeds, scratch=not supervised, head_labels=classes if supervised else None,
        supervised_overrides=None if supervised else [f"data.path={data}", f"train.epochs={preset['student_epochs']}",
                              "model.modality=depth", "data.augment=false"] + oracle_task + device + batch,
        pretrained=Pretrained(modality="rgb", input_size=args.teacher_size and [args.teacher_size] * 2)
        if pretrained else None)
    study.run()


if __name__ == "__main__":
    guarded(main)
